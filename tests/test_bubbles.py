"""Microbubble transport: geometry, kinematics, flow-weighted choices, count and determinism."""

import numpy as np
import pytest
from conftest import bifurcation, tube

from ulm.bubbles import build_network, simulate_tracks
from ulm.flow import solve_flow
from ulm.store import read_tracks
from ulm.vascular import build_graph


def run(graph, cfg, seed=1, path=None, **bubbles):
    flow = solve_flow(graph, cfg["flow"])
    return simulate_tracks(graph, flow, dict(cfg["bubbles"], **bubbles), seed, path=path, progress=False), flow


@pytest.fixture(scope="module")
def real_run():
    from ulm.config import load_config

    cfg = load_config()
    graph = build_graph("bundled:mouse_20120409", cfg["graph"])
    tracks, flow = run(graph, cfg, n_frames=1500, concentration=40)
    return graph, flow, tracks, cfg


def _radial_and_axial(graph, flow, tracks):
    """Distance of each bubble from its edge's axis and its axial coordinate (um)."""
    net = build_network(graph, flow)
    rel = tracks.pos_um.astype(float) - net.start_um[tracks.edge]
    axial = np.einsum("ij,ij->i", rel, net.dir[tracks.edge])
    radial = np.linalg.norm(rel - axial[:, None] * net.dir[tracks.edge], axis=1)
    return net, radial, axial


def test_every_bubble_stays_inside_its_vessel_lumen(real_run):
    graph, flow, tracks, cfg = real_run
    net, radial, axial = _radial_and_axial(graph, flow, tracks)
    radius = graph.diam_um[tracks.edge] / 2
    assert np.all(radial <= radius - cfg["bubbles"]["bubble_diam_um"] / 2 + 1e-3 + (radius < 1) * radius)
    assert np.all(radial <= radius + 1e-3)
    assert np.all((axial >= -1e-3) & (axial <= net.length_um[tracks.edge] + 1e-3))


def test_speed_follows_the_parabolic_profile_with_floor(real_run):
    graph, flow, tracks, cfg = real_run
    net, radial, _ = _radial_and_axial(graph, flow, tracks)
    wide = net.lumen_um[tracks.edge] > 2.0
    rho = radial[wide] / net.lumen_um[tracks.edge[wide]]
    expected = 2 * np.abs(flow.v_mean_mm_s[tracks.edge[wide]]) * np.maximum(1 - rho**2, cfg["bubbles"]["profile_floor"])
    np.testing.assert_allclose(np.linalg.norm(tracks.vel_mm_s[wide], axis=1), expected, rtol=2e-3, atol=1e-4)


def test_step_length_is_local_velocity_over_frame_rate(real_run):
    _, _, tracks, cfg = real_run
    k = cfg_k = 40
    assert len(tracks.frame) == 1500 * cfg_k
    same = (tracks.bubble[:-k] == tracks.bubble[k:]) & (tracks.edge[:-k] == tracks.edge[k:])
    step = np.linalg.norm(tracks.pos_um[k:][same].astype(float) - tracks.pos_um[:-k][same], axis=1)
    expected = np.linalg.norm(tracks.vel_mm_s[:-k][same], axis=1) * 1e3 / cfg["bubbles"]["frame_rate_hz"]
    assert same.sum() > 10_000
    np.testing.assert_allclose(step, expected, rtol=1e-3, atol=2e-4)


def test_bubbles_take_branches_in_proportion_to_flow(cfg):
    graph = bifurcation(d_a=10.0, l_a=100.0, d_b=6.0, l_b=100.0, d0=14.0)
    tracks, flow = run(graph, cfg, n_frames=20_000, concentration=20)
    q = np.abs(flow.flow_um3_s)
    ids_a = np.unique(tracks.bubble[tracks.edge == 1])
    ids_b = np.unique(tracks.bubble[tracks.edge == 2])
    frac_a = len(ids_a) / (len(ids_a) + len(ids_b))
    n = len(ids_a) + len(ids_b)
    expected = q[1] / (q[1] + q[2])
    print(f"branch a: {frac_a:.3f} of {n} bubbles, flow fraction {expected:.3f}")
    assert n > 2000
    assert abs(frac_a - expected) < 4 * np.sqrt(expected * (1 - expected) / n)


def test_injection_is_proportional_to_inflow(cfg):
    # two inlets (arteries of different width) join and leave through one vein
    from conftest import make_graph

    # long vessels, so that every injected bubble is seen on its inlet edge before it leaves
    pos = np.array([[0, 0, 0], [0, 100, 0], [80, 50, 0], [200, 50, 0]]) * 20
    graph = make_graph(pos, [[0, 2], [1, 2], [2, 3]], [12.0, 7.0, 14.0], ["artery", "artery", "vein"])
    tracks, flow = run(graph, cfg, n_frames=40_000, concentration=50)
    first_edge = {}
    for b, e in zip(tracks.bubble, tracks.edge, strict=False):
        first_edge.setdefault(b, e)
    first = np.array([first_edge[b] for b in first_edge if b >= 50])  # injected (ids >= slots)
    q = np.abs(flow.flow_um3_s)
    expected = q[0] / (q[0] + q[1])
    frac = np.mean(first == 0)
    print(f"inlet 0: {frac:.3f} of {len(first)} injections, inflow fraction {expected:.3f}")
    assert len(first) > 1000
    assert abs(frac - expected) < 4 * np.sqrt(expected * (1 - expected) / len(first))


def test_count_per_frame_stays_at_the_concentration(real_run, tmp_path, cfg):
    graph, flow, _, _ = real_run
    path = tmp_path / "tracks.zarr"
    simulate_tracks(
        graph, flow, dict(cfg["bubbles"], n_frames=2500, chunk_frames=300, concentration=25), 3, path=path, progress=False
    )
    tracks = read_tracks(path)
    counts = np.diff(tracks.frame_offsets)
    after_1s = counts[int(cfg["bubbles"]["frame_rate_hz"]) :]
    assert tracks.n_frames == 2500
    assert np.all(np.abs(after_1s - 25) <= 0.1 * 25)
    assert tracks.attrs["frame_rate_hz"] == cfg["bubbles"]["frame_rate_hz"]


def test_streamed_store_equals_in_memory_run_and_same_seed_is_identical(real_run, tmp_path, cfg):
    graph, flow, _, _ = real_run
    bcfg = dict(cfg["bubbles"], n_frames=700, chunk_frames=256, concentration=15)
    simulate_tracks(graph, flow, bcfg, 7, path=tmp_path / "a.zarr", progress=False)
    stored = read_tracks(tmp_path / "a.zarr")
    again = simulate_tracks(graph, flow, dict(bcfg, chunk_frames=700), 7, progress=False)
    other = simulate_tracks(graph, flow, bcfg, 8, progress=False)
    for name in ("frame", "bubble", "pos_um", "vel_mm_s"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(again, name))
    assert not np.array_equal(stored.pos_um, other.pos_um)


def test_pulsatility_modulates_speed_at_the_cardiac_rate(cfg):
    graph = tube(length_um=1e6, diam_um=20.0)
    tracks, flow = run(graph, cfg, n_frames=1000, concentration=1, pulsatility_rate_bpm=300.0, pulsatility_amplitude=0.4)
    t = np.arange(1000) / cfg["bubbles"]["frame_rate_hz"]
    speed = np.linalg.norm(tracks.vel_mm_s, axis=1)
    ratio = speed / speed.mean()
    np.testing.assert_allclose(ratio, 1 + 0.4 * np.sin(2 * np.pi * 5.0 * t), atol=2e-3)
