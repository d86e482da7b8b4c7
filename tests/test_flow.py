"""Network flow against analytic answers: Hagen-Poiseuille, bifurcation splits, mass conservation."""

import numpy as np
import pytest
from conftest import BUNDLED, SHARED_GRAPHS, bifurcation, tube

from ulm.flow import PA_PER_MMHG, conservation_residual, diameter_law_vmax_mm_s, pries_viscosity, solve_flow
from ulm.plots import velocity_summary
from ulm.vascular import build_graph


def test_pries_viscosity_limits():
    # wide vessel: relative viscosity tends to mu*_0.45 = 3.2 at H_D = 0.45; plasma alone at H_D = 0
    assert pries_viscosity(2000.0, 0.45, 1.0) == pytest.approx(3.2, rel=0.01)
    assert pries_viscosity(2000.0, 0.0, 1.2) == pytest.approx(1.2, rel=0.01)
    # Fahraeus-Lindqvist in vivo: capillaries are more viscous than 20-um arterioles
    assert pries_viscosity(5.0) > pries_viscosity(20.0)


def test_single_tube_is_hagen_poiseuille(cfg):
    graph = tube(length_um=200.0, diam_um=10.0)
    flow = solve_flow(graph, cfg["flow"])
    dp_pa = (cfg["flow"]["pressure_artery_mmHg"] - cfg["flow"]["pressure_vein_mmHg"]) * PA_PER_MMHG
    mu = pries_viscosity(10.0, cfg["flow"]["hematocrit"], cfg["flow"]["plasma_viscosity_mPa_s"]) * 1e-3
    q_expected = np.pi * (10e-6) ** 4 * dp_pa / (128 * mu * 200e-6) * 1e18  # um^3/s
    np.testing.assert_allclose(flow.flow_um3_s, q_expected, rtol=1e-9)
    np.testing.assert_allclose(flow.v_mean_mm_s, q_expected / (np.pi * 25.0) * 1e-3, rtol=1e-9)
    # linear pressure drop along a uniform tube
    assert flow.pressure_mmHg[1] == pytest.approx(0.5 * (cfg["flow"]["pressure_artery_mmHg"] + cfg["flow"]["pressure_vein_mmHg"]))


@pytest.mark.parametrize(("d_a", "l_a", "d_b", "l_b"), [(8.0, 100.0, 8.0, 100.0), (10.0, 80.0, 6.0, 150.0)])
def test_bifurcation_splits_flow_by_conductance(cfg, d_a, l_a, d_b, l_b):
    graph = bifurcation(d_a, l_a, d_b, l_b)
    q = solve_flow(graph, cfg["flow"]).flow_um3_s
    g = np.pi * graph.diam_um**4 / (128 * pries_viscosity(graph.diam_um, 0.3) * graph.length_um)
    assert q[1] / q[2] == pytest.approx(g[1] / g[2], rel=1e-9)
    assert q[0] == pytest.approx(q[1] + q[2], rel=1e-12)
    if d_a == d_b and l_a == l_b:
        assert q[1] == pytest.approx(q[2], rel=1e-12)


@pytest.mark.parametrize("source", BUNDLED + [str(p) for p in SHARED_GRAPHS])
def test_mass_is_conserved_at_every_interior_node(cfg, source):
    graph = build_graph(source, cfg["graph"])
    flow = solve_flow(graph, cfg["flow"])
    residual = conservation_residual(graph, flow)
    print(f"{source}: relative residual {residual:.1e}")
    assert residual < 1e-9


def _capillary_range_case(source):
    known_miss = "20111202" in source
    reason = "median capillary speed 0.28 mm/s: 4 open ends feed 12k nodes (see README, Flow)"
    return pytest.param(source, marks=pytest.mark.xfail(strict=True, reason=reason) if known_miss else ())


@pytest.mark.parametrize("source", [_capillary_range_case(s) for s in BUNDLED + [str(p) for p in SHARED_GRAPHS]])
def test_capillary_velocities_are_physiological(cfg, source):
    graph = build_graph(source, cfg["graph"])
    summary = velocity_summary(graph, solve_flow(graph, cfg["flow"]))
    print(source, {k: round(v["median_v_mm_s"], 2) for k, v in summary.items()})
    cap = summary["capillary"]["median_v_mm_s"]
    assert summary["artery"]["median_v_mm_s"] > cap
    assert summary["vein"]["median_v_mm_s"] > cap
    assert 0.5 <= cap <= 3.0


def test_diameter_law_mode_follows_the_paper_law_with_solved_directions(cfg):
    graph = build_graph("bundled:mouse_20120409", cfg["graph"])
    poiseuille = solve_flow(graph, cfg["flow"])
    law = solve_flow(graph, dict(cfg["flow"], mode="diameter_law"))
    d = np.maximum(graph.diam_um, cfg["flow"]["min_diam_um"])
    np.testing.assert_allclose(np.abs(law.v_mean_mm_s), np.exp(1.9 * np.log(d) - 6) / 2, rtol=1e-12)
    np.testing.assert_array_equal(np.sign(law.flow_um3_s), np.sign(poiseuille.flow_um3_s))
    assert diameter_law_vmax_mm_s(np.e**2) == pytest.approx(np.exp(3.8 - 6))
