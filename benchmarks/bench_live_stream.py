"""Live classification from a Merlin detector's TCP stream: sustained frames/s of 256x256 12-bit
frames with no dropped frames, latency percentiles, and the highest rate that is kept up with.

The stream comes from LiberTEM-live's simulator (``libertem-live-mib-sim``, a separate process, as
the Merlin software is) on loopback, replaying a ``.mib`` file of ``--frames`` simulated 256x256
U16 frames (a 16x16 simulated scan repeated; the scan shape is (frames/64, 64)); frames are
received by ``libertem_qd_mpx`` (``MerlinStreamSource``) and classified by ``watch`` (flat-field,
centre, RIA, FCNN) with the default threads (one per core). Runs:

- ``receive``: the simulator sends as fast as it can, frames are received and dropped at once
  (the receiver's own capacity);
- ``as fast as possible``: the simulator sends as fast as it can and ``watch`` classifies every
  frame: over TCP the sender is held back when the receiver is behind, so this is the sustained
  rate of the whole chain;
- one run per ``--rates`` value: the simulator paces the frames (``--dwelltime``, no cache). The
  rate is kept up with when the frames arrived at the rate asked (>= 97 %), the frames waiting for
  the classifier never reached the receiver's bound (so a real detector would not have had to
  hold back or drop a frame), no frame was dropped, and the last frame was classified soon after
  it arrived (lag at end < 0.5 s).

For each rate the table gives the frames dropped (counted from the frame numbers) and whether
the stream was held back (the frames waiting reached the receiver's bound, so the TCP sender
waited: a real Merlin would have dropped frames there); the highest rate with no drop is the
highest rate where neither happened.

Latency: from the moment a frame stack leaves the receiver to the frames' classes being known
(p50, p95, p99, max, after the calibration on the first 48 frames), and for paced runs the age
of a frame when its class is known, estimated from its send time (frame k is sent at
``first stack received - (16 - k) / rate``: this includes the receiver's batching of 16 frames
per stack).

    python benchmarks/bench_live_stream.py [--frames 4096] [--rates 500 1000 1500 2000] [--no-max]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from stream_sims import MerlinSim  # noqa: E402  (the tests' simulator launcher: robust start-up wait)


def start_sim(hdr: Path, nav_shape, dwell_us=None, log=None):
    """The Merlin simulator on loopback; returns (simulator, data port, control port) once it listens."""
    sim = MerlinSim(hdr, nav_shape, log or hdr.with_suffix(".sim.log"), dwell_us=dwell_us, timeout_s=300).start()
    return sim, sim.data, sim.control


def stop(sim):
    sim.stop()


def make_data(work: Path, n_frames: int) -> dict:
    from napari_sedclassify.models.persistence import save_model
    from napari_sedclassify.pipeline.acquisition import write_mib
    from napari_sedclassify.pipeline.train import train_model
    from napari_sedclassify.processing import PreprocessParams
    from napari_sedclassify.simulate import simulate_scan

    work.mkdir(parents=True, exist_ok=True)
    sx = 64
    sy = n_frames // sx
    mib = work / f"stream_{sy}x{sx}.mib"
    model_path = work / "fcnn256.sedmodel"
    sim = simulate_scan(work / "acq.npy", scan_shape=(16, 16), detector_px=256, seed=42)
    if not model_path.exists():
        train = [simulate_scan(work / f"t{i}.npy", scan_shape=(8, 8), detector_px=256, seed=40 + i) for i in (0, 1)]
        pinned = PreprocessParams(beam_radius_px=3.5, saturation_counts=4095, detect_bad_pixels=False)
        model = train_model([t.scan.source for t in train], [t.truth for t in train], model="fcnn",
                            flatfield=str(sim.flatfield_path), preprocess_params=pinned)
        save_model(model, model_path)
    if not mib.exists():
        frames = np.asarray(sim.scan.data.compute()).reshape(-1, 256, 256)
        write_mib(mib, (frames[k % len(frames)] for k in range(sy * sx)), (sy, sx))
    return {"mib": mib, "hdr": mib.with_suffix(".hdr"), "shape": (sy, sx), "model": model_path,
            "flat": str(sim.flatfield_path), "geometry": sim.geometry}


def run_receive(data, port, n) -> dict:
    from napari_sedclassify.pipeline.live import MerlinStreamSource

    src = MerlinStreamSource("127.0.0.1", port, data["shape"])
    while not src.ready():
        time.sleep(0.001)
    got = 0
    while not src.finished:
        b = src.poll(4096)
        if b is None:
            time.sleep(0.0005)
            continue
        got += len(b.index)
    src.close()
    st = src.stats()
    return {"frames": got, "receive_rate_hz": st.get("receive_rate_hz"), "dropped": st["frames_dropped"]}


def run_watch(data, model, port, rate=None) -> dict:
    from napari_sedclassify.pipeline.live import LiveClassMap, MerlinStreamSource, watch

    src = MerlinStreamSource("127.0.0.1", port, data["shape"])
    sy, sx = data["shape"]
    state = LiveClassMap((sy, sx), model.classes.ids, [2], model.classes.names)
    done_at = np.full(sy * sx, np.nan)
    update = state.update

    def recording_update(index, *a, **k):
        update(index, *a, **k)
        done_at[np.asarray(index)] = time.perf_counter()

    state.update = recording_update
    cpu0 = time.process_time()
    res = watch(model, src, flatfield=data["flat"], geometry=data["geometry"], state=state, timeout_s=120)
    cpu = time.process_time() - cpu0
    st = res.source_stats
    lat = state.latency_stats()
    t_last_done = np.nanmax(done_at)
    n = int(np.isfinite(done_at).sum())
    out = {"status": res.status, "frames": n, "received": st["frames_received"], "dropped": st["frames_dropped"],
           "receive_rate_hz": st.get("receive_rate_hz"), "max_waiting": st["max_buffered_frames"],
           "bound": src.max_buffered_frames,
           "classified_rate_hz": round((n - 1) / (t_last_done - src._stats["first_frame_at"]), 1) if n > 1 else None,
           "lag_at_end_s": round(t_last_done - src._stats["last_frame_at"], 3),
           "cpu_s": round(cpu, 2), "frames_per_cpu_s": round(n / cpu, 0),
           **{k: lat.get(k) for k in ("median_ms", "p95_ms", "p99_ms", "max_ms", "calibration_mean_ms")}}
    if rate:
        k = np.arange(sy * sx)
        sent = src._stats["first_frame_at"] - (16 - k) / rate
        age = (done_at - sent)[48:] * 1e3
        out.update(age_p50_ms=round(float(np.nanpercentile(age, 50)), 1),
                   age_p99_ms=round(float(np.nanpercentile(age, 99)), 1))
        out["held_back"] = out["max_waiting"] >= out["bound"]
        out["no_drop"] = bool(out["dropped"] == 0 and not out["held_back"] and out["frames"] == sy * sx)
        out["kept_up"] = bool(out["receive_rate_hz"] and out["receive_rate_hz"] >= 0.97 * rate
                              and out["max_waiting"] < out["bound"] and out["dropped"] == 0
                              and out["frames"] == sy * sx and out["lag_at_end_s"] < 0.5)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/sedclassify-bench-stream")
    ap.add_argument("--frames", type=int, default=4096)
    ap.add_argument("--rates", type=float, nargs="+", default=[500, 1000, 1500, 2000])
    ap.add_argument("--no-max", action="store_true", help="skip the receive-only and as-fast-as-possible runs")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from napari_sedclassify.models.persistence import load_model

    data = make_data(Path(args.workdir), args.frames)
    model = load_model(data["model"])
    n = data["shape"][0] * data["shape"][1]
    print(f"{n} frames of 256x256 U16 ({data['mib'].stat().st_size / 1e6:.0f} MB), load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    results = {"frames": n, "cores": os.cpu_count(), "load_start": os.getloadavg()[0]}

    if not args.no_max:
        proc, port, _ = start_sim(data["hdr"], data["shape"])
        try:
            results["receive"] = run_receive(data, port, n)
            print("receive only:", results["receive"], flush=True)
            results["max"] = run_watch(data, model, port)
            print("as fast as possible:", results["max"], flush=True)
        finally:
            stop(proc)
    results["paced"] = {}
    for rate in args.rates:
        proc, port, _ = start_sim(data["hdr"], data["shape"], dwell_us=1e6 / rate)
        try:
            r = run_watch(data, model, port, rate)
        finally:
            stop(proc)
        results["paced"][rate] = r
        print(f"asked {rate:g} Hz:", r, flush=True)
    kept = [r for r, v in results["paced"].items() if v["kept_up"]]
    results["highest_rate_kept_up"] = max(kept) if kept else None
    no_drop = [r for r, v in results["paced"].items() if v["no_drop"]]
    results["highest_rate_no_drop"] = max(no_drop) if no_drop else None
    results["load_end"] = os.getloadavg()[0]
    print(f"highest rate with no drop: {results['highest_rate_no_drop']} Hz; "
          f"highest rate kept up with: {results['highest_rate_kept_up']} Hz "
          f"(load average at the end {results['load_end']:.1f})")
    print("\n| rate asked (Hz) | received (Hz) | classified (Hz) | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) | "
          "age p50 / p99 (ms) | most waiting | dropped | held back | lag at end (s) | frames per CPU-s | kept up |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|---:|---:|:-:|")
    rows = ([("max", results["max"])] if "max" in results else []) + list(results["paced"].items())
    for rate, v in rows:
        age = f"{v['age_p50_ms']:.0f} / {v['age_p99_ms']:.0f}" if "age_p50_ms" in v else ""
        print(f"| {rate} | {v['receive_rate_hz']} | {v['classified_rate_hz']} | {v['median_ms']} | {v['p95_ms']} | "
              f"{v['p99_ms']} | {v['max_ms']} | {age} | {v['max_waiting']} | {v['dropped']} | "
              f"{'yes' if v['max_waiting'] >= v['bound'] else 'no'} | {v['lag_at_end_s']} | "
              f"{v['frames_per_cpu_s']:.0f} | "
              f"{'yes' if v.get('kept_up') else ('' if rate == 'max' else 'no')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
