"""Steady blood flow in a vascular network (Poiseuille, one sparse linear solve).

Each edge is a cylinder of diameter d and length L with conductance G = pi d^4 / (128 mu L); mu is
the in vivo apparent viscosity of Pries et al. (1994), "Resistance to blood flow in microvessels
in vivo", Circ. Res. 75:904-915 (the Fahraeus-Lindqvist effect including the endothelial surface
layer). Open ends (degree-1 nodes) get a fixed pressure by vessel type; mass conservation at every
other node gives a symmetric positive definite system on the interior pressures.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from ulm.errors import UlmError
from ulm.store import Flow, Graph

PA_PER_MMHG = 133.322387415
UM = 1e-6


def pries_viscosity(diam_um: np.ndarray, hematocrit: float = 0.45, plasma_mPa_s: float = 1.2) -> np.ndarray:
    """Apparent blood viscosity (mPa s) in a vessel of diameter ``diam_um`` (um), in vivo law of
    Pries et al. (1994); valid for d > 1.1 um."""
    d = np.asarray(diam_um, dtype=np.float64)
    mu45 = 6.0 * np.exp(-0.085 * d) + 3.2 - 2.44 * np.exp(-0.06 * d**0.645)
    c = (0.8 + np.exp(-0.075 * d)) * (-1.0 + 1.0 / (1.0 + 1e-11 * d**12)) + 1.0 / (1.0 + 1e-11 * d**12)
    hd_term = ((1.0 - hematocrit) ** c - 1.0) / ((1.0 - 0.45) ** c - 1.0)
    wall = (d / (d - 1.1)) ** 2
    return plasma_mPa_s * (1.0 + (mu45 - 1.0) * hd_term * wall) * wall


def conductance(diam_um: np.ndarray, length_um: np.ndarray, viscosity_mPa_s: np.ndarray) -> np.ndarray:
    """Hagen-Poiseuille conductance pi d^4 / (128 mu L) in m^3 / (s Pa)."""
    d, length, mu = np.asarray(diam_um) * UM, np.asarray(length_um) * UM, np.asarray(viscosity_mPa_s) * 1e-3
    return np.pi * d**4 / (128.0 * mu * length)


def boundary_pressures(graph: Graph, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Open-end nodes and their imposed pressures (mmHg), chosen by the type of their one edge.

    Arteries get ``pressure_artery_mmHg`` (inlets), veins ``pressure_vein_mmHg`` (outlets),
    capillaries ``pressure_capillary_mmHg``; ends of unknown type count as arteries when at least
    ``large_vessel_diam_um`` wide, else as capillaries.
    """
    ends = np.flatnonzero(graph.degree() == 1)  # the open ends: nodes with exactly one edge
    if len(ends) == 0:
        raise UlmError("graph has no open ends (nodes of degree 1): no inlet or outlet for the flow")
    edge_of = np.empty(graph.n_nodes, dtype=np.int64)
    edge_of[graph.edges[:, 1]] = np.arange(len(graph.edges))
    edge_of[graph.edges[:, 0]] = np.arange(len(graph.edges))
    kind = graph.vessel_type[edge_of[ends]].astype(object)
    unknown = kind == "unknown"
    kind[unknown] = np.where(graph.diam_um[edge_of[ends[unknown]]] >= cfg["large_vessel_diam_um"], "artery", "capillary")
    table = {
        "artery": cfg["pressure_artery_mmHg"],
        "capillary": cfg["pressure_capillary_mmHg"],
        "vein": cfg["pressure_vein_mmHg"],
    }
    return ends, np.array([table[k] for k in kind], dtype=np.float64)


def solve_pressures(n_nodes: int, edges: np.ndarray, g: np.ndarray, fixed: np.ndarray, p_fixed: np.ndarray) -> np.ndarray:
    """Node pressures from conservation sum_j G_ij (p_i - p_j) = 0 at free nodes, p = p_fixed at
    ``fixed`` nodes (any consistent pressure unit). One sparse direct solve."""
    i, j = edges[:, 0], edges[:, 1]
    lap = sp.coo_matrix(
        (np.concatenate([g, g, -g, -g]), (np.concatenate([i, j, i, j]), np.concatenate([i, j, j, i]))), shape=(n_nodes, n_nodes)
    ).tocsr()
    is_fixed = np.zeros(n_nodes, dtype=bool)
    is_fixed[fixed] = True
    free = np.flatnonzero(~is_fixed)
    p = np.zeros(n_nodes)
    p[fixed] = p_fixed
    if len(free):
        a_ff = lap[free][:, free].tocsc()
        rhs = -lap[free][:, fixed] @ p_fixed
        p[free] = spsolve(a_ff, rhs)
        if not np.all(np.isfinite(p)):
            raise UlmError("flow solve failed: the network has parts not connected to any open end")
    return p


def diameter_law_vmax_mm_s(diam_um: np.ndarray) -> np.ndarray:
    """Centre-line velocity of the paper's simulator: ln v_max[mm/s] = 1.9 ln d[um] - 6."""
    return np.exp(1.9 * np.log(np.asarray(diam_um, dtype=np.float64)) - 6.0)


def solve_flow(graph: Graph, cfg: dict) -> Flow:
    """The `ulm flow` stage: pressures, signed flows and mean velocities on every edge.

    In ``diameter_law`` mode the direction of each edge comes from the Poiseuille solve and the
    speed from :func:`diameter_law_vmax_mm_s` (v_mean = v_max / 2); mass is then not conserved.
    """
    diam = np.maximum(graph.diam_um, cfg["min_diam_um"])
    length = graph.length_um
    mu = pries_viscosity(diam, cfg["hematocrit"], cfg["plasma_viscosity_mPa_s"])
    g = conductance(diam, length, mu)
    ends, p_ends = boundary_pressures(graph, cfg)
    p = solve_pressures(graph.n_nodes, graph.edges, g, ends, p_ends * PA_PER_MMHG)
    q = g * (p[graph.edges[:, 0]] - p[graph.edges[:, 1]]) / UM**3  # um^3/s
    area_um2 = np.pi * diam**2 / 4
    v_mean = q / area_um2 * 1e-3  # um/s -> mm/s
    if cfg["mode"] == "diameter_law":
        v_mean = np.sign(q) * diameter_law_vmax_mm_s(diam) / 2
        q = v_mean * 1e3 * area_um2
    attrs = {"viscosity_law": "Pries et al. 1994 in vivo", "n_open_ends": int(len(ends))}
    return Flow(flow_um3_s=q, v_mean_mm_s=v_mean, pressure_mmHg=p / PA_PER_MMHG, attrs=attrs)


def conservation_residual(graph: Graph, flow: Flow) -> float:
    """Largest net flow into an interior node (degree > 1), relative to the network's total inflow."""
    n = graph.n_nodes
    net = np.bincount(graph.edges[:, 1], flow.flow_um3_s, n) - np.bincount(graph.edges[:, 0], flow.flow_um3_s, n)
    interior = graph.degree() > 1
    inflow = net[~interior].clip(max=0).sum()  # open ends lose what they feed into the network
    return float(np.abs(net[interior]).max() / max(-inflow, np.finfo(float).tiny))
