"""Forward model against analytic answers: PSF position, widths, phase, superposition, SNR, clutter."""

import numpy as np
import pytest

from ulm.cli import main
from ulm.config import load_config
from ulm.forward.geometry import Grid
from ulm.forward.psf import fwhm, measure_point, render_psf
from ulm.forward.simulate import build_model, static_clutter
from ulm.imaging.blocks import svd_filter
from ulm.store import TracksWriter, read_iq

FOV = [0.0, 600.0, 0.0, 600.0, 0.0, 600.0]


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def model(request):
    return build_model(load_config(), request.param, FOV)


def render(model, mode, xyz, amp=None):
    model.mode = mode
    xyz = np.atleast_2d(xyz)
    return model.render(xyz, np.ones(len(xyz)) if amp is None else amp, np.zeros(len(xyz), np.int64), 1)[0]


@pytest.mark.parametrize("mode", ["rf", "psf"])
def test_single_scatterer_peaks_at_its_true_pixel(model, mode):
    rng = np.random.default_rng(0)
    for xyz in rng.uniform(100, 500, size=(4, 3)):
        if model.grid.dims == 2:
            xyz[1] = model.grid.origin_um[1]
        img = np.abs(render(model, mode, xyz))
        peak = np.array(np.unravel_index(np.argmax(img), img.shape), float)
        true = (xyz[[2, 1, 0]] - model.grid.origin_um) / model.grid.spacing_um
        axes = [0, 2] if model.grid.dims == 2 else [0, 1, 2]
        assert np.all(np.abs(peak[axes] - true[axes]) <= 0.5), (mode, peak, true)


@pytest.mark.parametrize("depth", [50.0, 550.0])
def test_rf_fwhm_matches_wavelength_times_f_number_and_bandwidth(model, depth):
    probe = model.probe
    m = measure_point(probe, model.grid, [300.0, 300.0, depth])
    expected = probe.lateral_fwhm_um(depth)
    lateral = m["fwhm_um"][0] / expected
    axial = m["fwhm_um"][2] / probe.axial_fwhm_um
    print(
        f"{probe.dims}D depth {depth}: lateral {m['fwhm_um'][0]:.1f} um = {lateral:.3f} lambda F#, axial {axial:.3f} of expected"
    )
    assert lateral == pytest.approx(1.0, abs=0.15)
    assert axial == pytest.approx(1.0, abs=0.15)
    if probe.dims == 3:
        assert m["fwhm_um"][1] / expected == pytest.approx(1.0, abs=0.15)


def test_psf_mode_matches_rf_widths_and_phase(model):
    """At a depth between the table's entries, on a fine grid around an off-pixel scatterer."""
    lam = model.probe.wavelength_um
    xyz = np.array([287.3, 300.0 if model.grid.dims == 2 else 311.1, 333.3])
    step = lam / 20
    n = [41, 1 if model.grid.dims == 2 else 41, 41]
    origin = np.array([xyz[2] - 20 * step / 2, xyz[1] - (n[1] // 2) * step, xyz[0] - 20 * step])
    fine = Grid(origin_um=origin, spacing_um=np.array([step / 2, step, step]), shape=tuple(n), dims=model.grid.dims)
    model.mode = "rf"
    from ulm.forward.rf import rf_image

    rf = rf_image(model.probe, fine, xyz[None], np.ones(1) / model.gain)
    psf = render_psf(model.table, fine, xyz[None], np.ones(1) / model.gain, np.zeros(1, np.int64), 1)[0]
    c = (20, n[1] // 2, 20)
    axes = {"z": (slice(None), c[1], c[2]), "x": (c[0], c[1], slice(None))}
    if model.grid.dims == 3:
        axes["y"] = (c[0], slice(None), c[2])
    u = np.arange(41)
    for name, sl in axes.items():
        w_rf, w_psf = fwhm(u, np.abs(rf[sl]) ** 2), fwhm(u, np.abs(psf[sl]) ** 2)
        print(f"{model.grid.dims}D {name}: FWHM rf {w_rf:.2f} px, psf {w_psf:.2f} px")
        assert w_psf == pytest.approx(w_rf, rel=0.10)
    assert abs(np.angle(psf[c] * np.conj(rf[c]))) < 0.2
    assert abs(psf[c]) == pytest.approx(abs(rf[c]), rel=0.05)


@pytest.mark.parametrize("mode", ["rf", "psf"])
def test_two_scatterers_image_is_the_sum_of_each(model, mode):
    a, b = np.array([250.0, 300.0, 200.0]), np.array([340.0, 300.0, 260.0])
    both = render(model, mode, np.stack([a, b]), np.array([1.0, 0.7]))
    each = render(model, mode, a) + render(model, mode, b, np.array([0.7]))
    np.testing.assert_allclose(both, each, atol=1e-5 * np.abs(each).max())


def test_scaling_puts_one_mb_at_the_centre_depth_at_unit_peak(model):
    centre = model.grid.origin_um + (np.array(model.grid.shape) - 1) // 2 * model.grid.spacing_um
    xyz = centre[[2, 1, 0]]
    for mode in ("rf", "psf"):
        assert np.abs(render(model, mode, xyz)).max() == pytest.approx(1.0, rel=0.05)


def test_svd_filter_removes_static_clutter_and_keeps_moving_bubbles():
    cfg = load_config(overrides=["forward.clutter_db=20"])
    model = build_model(cfg, 2, FOV, mode="psf")
    n = 64
    path = np.column_stack([np.linspace(100, 500, n), np.full(n, model.grid.origin_um[1]), np.linspace(150, 450, n)])
    bubbles = model.render(path, np.ones(n), np.arange(n), n)
    clutter = static_clutter(model, cfg["forward"], np.random.default_rng(1))
    data = bubbles + clutter
    filtered = svd_filter(data, 1)
    before = np.linalg.norm(data - bubbles) / np.linalg.norm(bubbles)
    after = np.linalg.norm(filtered - bubbles) / np.linalg.norm(bubbles)
    print(f"clutter / MB energy ratio: before {before:.2f}, after {after:.3f}")
    assert before > 5
    assert after < 0.3


# ------------------------------------------------------------------------------------ the stage
def write_tracks(path, positions_per_frame, frame_rate_hz=1000.0):
    """A tracks.zarr whose vascular volume (bbox_um, the default field of view) is FOV."""
    with TracksWriter(path, {"frame_rate_hz": frame_rate_hz, "bbox_um": FOV}) as w:
        for t, pos in enumerate(positions_per_frame):
            pos = np.atleast_2d(pos)
            w.append(np.full(len(pos), t), np.arange(len(pos)), pos, np.zeros_like(pos))


def test_output_snr_matches_the_configured_snr(tmp_path):
    cfg = load_config()
    model = build_model(cfg, 2, FOV)
    centre = model.grid.origin_um + (np.array(model.grid.shape) - 1) // 2 * model.grid.spacing_um
    write_tracks(tmp_path / "tracks.zarr", [centre[[2, 1, 0]]] * 400)
    code = main(
        [
            "forward",
            "--quiet",
            "--set",
            "forward.snr_db=20",
            "--set",
            "forward.block_frames=128",
            str(tmp_path / "tracks.zarr"),
            str(tmp_path / "iq.zarr"),
        ]
    )
    assert code == 0
    iq = read_iq(tmp_path / "iq.zarr")
    data = iq.iq[:]
    cz, cx = (np.array(data.shape[1:]) - 1) // 2
    peak = np.abs(data[:, cz, cx].mean())
    noise = np.sqrt(np.mean(np.abs(data[:, :3, :3]) ** 2))  # a corner far from the MB
    snr = 20 * np.log10(peak / noise)
    print(f"measured SNR {snr:.2f} dB for 20 dB configured")
    assert snr == pytest.approx(20.0, abs=1.0)
    assert iq.attrs["plane_y_um"] == pytest.approx(300.0)
    assert iq.attrs["mode"] == "psf"


def test_2d_images_only_the_elevation_slab_and_is_deterministic(tmp_path):
    inside, outside = [300.0, 300.0, 300.0], [300.0, 450.0, 300.0]  # slab is 200 um thick around y = 300
    write_tracks(tmp_path / "in.zarr", [inside] * 8)
    write_tracks(tmp_path / "out.zarr", [outside] * 8)
    args = ["forward", "--quiet", "--set", "forward.snr_db=null"]
    assert main([*args, str(tmp_path / "in.zarr"), str(tmp_path / "a.zarr")]) == 0
    assert main([*args, str(tmp_path / "out.zarr"), str(tmp_path / "b.zarr")]) == 0
    assert np.abs(read_iq(tmp_path / "a.zarr").iq[:]).max() > 0.5
    assert np.abs(read_iq(tmp_path / "b.zarr").iq[:]).max() == 0
    noisy = ["forward", "--quiet", str(tmp_path / "in.zarr")]
    assert main([*noisy, str(tmp_path / "n1.zarr")]) == 0 and main([*noisy, str(tmp_path / "n2.zarr")]) == 0
    np.testing.assert_array_equal(read_iq(tmp_path / "n1.zarr").iq[:], read_iq(tmp_path / "n2.zarr").iq[:])


def _bad_tracks_shape(path):
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.attrs["frame_rate_hz"] = 1000.0
    for name, data in {
        "frame": np.zeros(3, "i4"),
        "bubble": np.zeros(3, "i8"),
        "pos_um": np.zeros((3, 2), "f4"),
        "vel_mm_s": np.zeros((3, 3), "f4"),
        "frame_offsets": np.array([0, 3]),
    }.items():
        g.create_array(name, data=data)


@pytest.mark.parametrize(
    ("make", "overrides", "needle"),
    [
        (lambda p: write_tracks(p, [[300.0, 300.0, 300.0]] * 2), ["forward.fov_um=[-9000, 9000, 0, 600, 0, 600]"], "aperture"),
        (lambda p: write_tracks(p, [[300.0, 300.0, 300.0]] * 2), ["forward.fov_um=[0, 600, 0, 600, -5000, 600]"], "probe face"),
        (lambda p: write_tracks(p, [[300.0, 300.0, 300.0]] * 2), ["probe.linear.f0_hz=0"], "probe.linear.f0_hz"),
        (lambda p: write_tracks(p, []), [], "no bubble positions"),
        (lambda p: write_tracks(p, [[0.3, 0.3, 0.3], [0.1, 0.5, 0.2]]), [], "micrometres"),
        (_bad_tracks_shape, [], "(M, 3)"),
    ],
    ids=["grid-outside-aperture", "grid-behind-probe", "zero-frequency", "empty-tracks", "tracks-in-mm", "tracks-shape"],
)
def test_bad_forward_input_gives_one_clear_error_and_no_output(tmp_path, capsys, make, overrides, needle):
    tracks, out = tmp_path / "tracks.zarr", tmp_path / "iq.zarr"
    make(tracks)
    argv = ["forward", "--quiet"] + [x for o in overrides for x in ("--set", o)] + [str(tracks), str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists() and not out.with_name("iq.zarr.tmp").exists()


def test_forward_on_an_existing_dask_cluster_equals_the_local_run(tmp_path):
    from distributed import LocalCluster

    write_tracks(tmp_path / "tracks.zarr", [[300.0 + t, 300.0, 200.0 + t] for t in range(40)])
    args = ["forward", "--quiet", "--set", "forward.block_frames=16"]
    assert main([*args, str(tmp_path / "tracks.zarr"), str(tmp_path / "local.zarr")]) == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = [*args, "--set", f"forward.dask_scheduler={cluster.scheduler_address}"]
        assert main([*remote, str(tmp_path / "tracks.zarr"), str(tmp_path / "remote.zarr")]) == 0
    np.testing.assert_array_equal(read_iq(tmp_path / "local.zarr").iq[:], read_iq(tmp_path / "remote.zarr").iq[:])


def test_unreachable_dask_scheduler_is_one_clear_error(tmp_path, capsys):
    write_tracks(tmp_path / "tracks.zarr", [[300.0, 300.0, 300.0]] * 4)
    capsys.readouterr()
    argv = [
        "forward",
        "--quiet",
        "--set",
        "forward.dask_scheduler=tcp://127.0.0.1:9",
        str(tmp_path / "tracks.zarr"),
        str(tmp_path / "iq.zarr"),
    ]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "unreachable" in err[0], err
    assert not (tmp_path / "iq.zarr").exists()
