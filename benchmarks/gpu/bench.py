"""Benchmarks of the GPU check, on a random-weight model of SmolLM2-135M's exact shape (run.py starts this script with
the carried packages on the path; it also runs alone wherever workbench imports).

Each benchmark writes ``bench_<name>.json`` (rows, a Markdown table, the machine) to ``--out``; ``env.json`` holds the
machine: the card's name, torch, CUDA and library versions. GPU timings are quoted as ratios against the same
machine's CPU running the same call (or, for capture, against the same run's bare forward):

* ``capture_overhead``: ``workbench.capture`` of the 30 ``blocks.*.hook_resid_post`` sites (streamed float64 centred
  Grams) vs a bare forward over the same pre-built batches, on the device.
* ``batched_spectra``: ``batched_singular_values`` of the 210 per-layer weight matrices (``method="auto"``: float64
  Gram + batched ``eigvalsh``; ``"svd"``: batched ``svdvals``), ``singular_values_from_gram`` of the 30 residual Grams
  [30, 576, 576] and W_E's [49152, 576] SVD, device vs CPU; with the largest deviation between the two results.
* ``erv_era``: ``erv_era`` of the residual stream of 512 tokens at all 30 layers ([30, 512, 576]), device vs CPU.
* ``weight_spectra``: the analysis' ``compute`` (spectra of every weight matrix, WeightWatcher fits), device vs CPU.

Timings are the best of ``--repeats`` calls after one warm-up (CUDA synchronised around each call), except the CPU
runs of weight_spectra and W_E, timed once. ``--quick`` shrinks everything (2 layers, fewer tokens) for a dry run.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/common.py

import common  # noqa: E402

import workbench  # noqa: E402
from workbench.capture import tokens as tok  # noqa: E402
from workbench.capture.hooks import StopForward, hooks_attached, resolve_sites, stoppable  # noqa: E402
from workbench.models.adapters import as_matrix  # noqa: E402
from workbench.models.loaded import LoadedModel  # noqa: E402
from workbench.spectra import batched_singular_values, singular_values_from_gram  # noqa: E402
from workbench.spectra.dynamics import erv_era  # noqa: E402

RESID = "blocks.*.hook_resid_post"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed ones, the device synchronised around each."""
    for _ in range(warmup):
        fn()
        sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return times


def version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "absent"


def env_info(device: torch.device) -> dict[str, object]:
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or 'unknown'})",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        **{name: version(name) for name in ("transformers", "transformer-lens", "tokenizers", "huggingface-hub",
                                            "numpy", "scipy", "pyarrow", "datasets")},
    }


def build_model(model_dir: Path, device: torch.device, quick: bool, folder: Path) -> LoadedModel:
    """SmolLM2-135M's config with random weights (seed 0), saved with the carried tokenizer and loaded by
    ``workbench.load_model`` on ``device`` (``quick``: 2 layers)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    if quick:
        config.num_hidden_layers = 2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    for path in model_dir.iterdir():
        if path.is_file() and path.name != "config.json":
            shutil.copy2(path, folder / path.name)
    return workbench.load_model(folder, device=device)


def table(headers: list[str], rows: list[list[object]]) -> list[str]:
    """A Markdown table."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def rel_diff(a: list[torch.Tensor] | torch.Tensor, b: list[torch.Tensor] | torch.Tensor) -> float:
    """Largest |a − b| / max|b| over paired tensors (brought to the CPU in float64)."""
    pairs = zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]
    worst = 0.0
    for x, y in pairs:
        x, y = x.detach().double().cpu(), y.detach().double().cpu()
        worst = max(worst, float((x - y).abs().max() / y.abs().max().clamp_min(1e-300)))
    return worst


def write(out: Path, name: str, title: str, env: dict, rows: list[dict], lines: list[str]) -> None:
    data = {"title": title, "env": env, "rows": rows, "lines": lines}
    (out / f"bench_{name}.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    print(f"\n## {title}\n" + "\n".join(lines), flush=True)


# ---------------------------------------------------------------------------------------------------------------------


def bench_capture(lm: LoadedModel, device: torch.device, texts: list[str], repeats: int) -> tuple[list, list]:
    points = lm.hook_points()
    resid = resolve_sites(points, RESID)
    tokenized = tok.tokenize(lm, texts, max_length=None, max_tokens=None)
    tokens = [b.tokens.to(device) for b in tok.batches(tokenized, 8, tok.pad_id(lm), "all", True)]

    def bare() -> None:
        with torch.inference_mode():
            for t in tokens:
                lm.model(t)

    def stop(x: torch.Tensor, hook: object = None) -> None:
        raise StopForward

    def stopped() -> None:
        with hooks_attached(points, {resid[-1]: stop}), torch.inference_mode():
            for t in tokens:
                with stoppable():
                    lm.model(t)

    variants = {"bare forward (baseline)": bare, "bare, stopped after the last resid_post": stopped,
                f"capture {len(resid)} resid_post (float64 Grams)":
                    lambda: workbench.capture(lm, texts, sites=resid, batch_size=8)}
    times = {name: timed(fn, device, repeats) for name, fn in variants.items()}
    base = min(times["bare forward (baseline)"])
    rows = [{"variant": name, "best_s": min(t), "median_s": statistics.median(t), "vs_bare": min(t) / base,
             "tokens_per_s": tokenized.n_tokens / min(t)} for name, t in times.items()]
    lines = [f"{len(texts)} prompts, {tokenized.n_tokens} tokens in {len(tokens)} batches of 8; best of {repeats}",
             "", *table(["variant", "best s", "median s", "vs bare", "tok/s"],
                        [[r["variant"], r["best_s"], r["median_s"], r["vs_bare"], round(r["tokens_per_s"])]
                         for r in rows])]
    return rows, lines


def bench_spectra(lm: LoadedModel, device: torch.device, texts: list[str], repeats: int,
                  quick: bool) -> tuple[list, list]:
    mats = [as_matrix(kind, w.detach()).float().contiguous() for kind, layer, w in lm.weights() if layer is not None]
    cap = workbench.capture(lm, texts, sites=RESID, batch_size=8)
    grams = torch.stack([cap[s].comoment for s in cap.sites]).to(device)
    calls: dict[str, tuple[Callable, object, int]] = {  # name: (device call, CPU call, CPU repeats)
        f"{len(mats)} weight matrices, auto (float64 Gram + eigvalsh)": (
            lambda m: batched_singular_values(m), mats, repeats),
        f"{grams.shape[0]} residual Grams {list(grams.shape[1:])} float64 (eigvalsh)": (
            singular_values_from_gram, grams, repeats),
    }
    if not quick:  # the slow CPU calls
        calls[f"{len(mats)} weight matrices, method='svd' (svdvals)"] = (
            lambda m: batched_singular_values(m, method="svd"), mats, 1)  # seconds per call on a CPU
        w_e = lm.weight("W_E").detach().float().contiguous()
        calls[f"W_E {list(w_e.shape)}, auto"] = (lambda m: batched_singular_values(m), [w_e], 1)
    rows = []
    for name, (fn, arg, cpu_repeats) in calls.items():
        cpu_arg = [m.cpu() for m in arg] if isinstance(arg, list) else arg.cpu()
        result = {}
        on_device = timed(lambda: result.__setitem__("d", fn(arg)), device, repeats)
        on_cpu = timed(lambda: result.__setitem__("c", fn(cpu_arg)), torch.device("cpu"), cpu_repeats,
                       warmup=1 if cpu_repeats > 1 else 0)
        rows.append({"call": name, "device_s": min(on_device), "cpu_s": min(on_cpu),
                     "cpu_over_device": min(on_cpu) / min(on_device), "max_rel_diff": rel_diff(result["d"],
                                                                                                result["c"])})
    lines = [f"best of {repeats} after a warm-up (CPU runs of svdvals and W_E: one call); speed-up = CPU s / device s",
             "",
             *table(["call", f"{device.type} s", "cpu s", "speed-up", "max |Δσ|/σmax"],
                    [[r["call"], r["device_s"], r["cpu_s"], r["cpu_over_device"], f"{r['max_rel_diff']:.1e}"]
                     for r in rows])]
    return rows, lines


def long_text(lm: LoadedModel, n_tokens: int) -> str:
    """Default prompts joined until the text has at least ``n_tokens`` tokens."""
    text = ""
    for prompt in common.cycled_prompts(4):
        text = f"{text} {prompt}".strip()
        if lm.model.to_tokens(text).shape[1] >= n_tokens:
            return text
    raise RuntimeError(f"the default prompts hold fewer than {n_tokens} tokens")


def bench_erv_era(lm: LoadedModel, device: torch.device, n_tokens: int, repeats: int) -> tuple[list, list]:
    cap = workbench.capture(lm, long_text(lm, n_tokens), sites=RESID, keep="full", exclude_bos=False,
                            max_length=n_tokens)
    hidden = torch.stack([cap[s].full for s in cap.sites]).to(device)  # [L, T, d] float32
    cpu_hidden = hidden.cpu()
    result = {}
    on_device = timed(lambda: result.__setitem__("d", erv_era(hidden)), device, repeats)
    on_cpu = timed(lambda: result.__setitem__("c", erv_era(cpu_hidden)), torch.device("cpu"), repeats)
    d, c = result["d"], result["c"]
    diff = max(abs(a - b) for a, b in zip(d.erv + d.era, c.erv + c.era, strict=True))
    rows = [{"hidden": list(hidden.shape), "prefixes": len(d.ks), "device_s": min(on_device), "cpu_s": min(on_cpu),
             "cpu_over_device": min(on_cpu) / min(on_device), "max_abs_diff_erv_era": diff}]
    lines = [f"erv_era(hidden {list(hidden.shape)}): {len(d.ks)} prefixes (stride 20, variant 'optimized'); best "
             f"of {repeats} after a warm-up", "",
             *table([f"{device.type} s", "cpu s", "speed-up", "max |Δ| ERV/ERA"],
                    [[rows[0]["device_s"], rows[0]["cpu_s"], rows[0]["cpu_over_device"], f"{diff:.1e}"]])]
    return rows, lines


def bench_weight_spectra(lm: LoadedModel, device: torch.device, repeats: int, quick: bool) -> tuple[list, list]:
    from workbench.analysis import Inputs
    from workbench_analyses.weight_spectra import WeightSpectraConfig, compute

    weights = [(k, layer, w.detach()) for k, layer, w in lm.weights()]
    on = Inputs(model_name=lm.name, facts=lm.facts, weights=weights)
    off = Inputs(model_name=lm.name, facts=lm.facts, weights=[(k, layer, w.cpu()) for k, layer, w in weights])
    config = WeightSpectraConfig(include_embeddings=not quick)
    result = {}
    on_device = timed(lambda: result.__setitem__("d", compute(on, config)), device, repeats)
    on_cpu = timed(lambda: result.__setitem__("c", compute(off, config)), torch.device("cpu"), 1, warmup=0)
    d, c = result["d"], result["c"]
    worst = {}
    for column in ("erank", "stable_rank", "sigma_max", "alpha", "mp_softrank"):
        pairs = [(a, b) for a, b in zip(getattr(d, column), getattr(c, column), strict=True)
                 if a is not None and b is not None]
        worst[column] = max((abs(a - b) / max(abs(b), 1e-12) for a, b in pairs), default=float("nan"))
    rows = [{"matrices": len(d.matrix), "device_s": min(on_device), "cpu_s": min(on_cpu),
             "cpu_over_device": min(on_cpu) / min(on_device), "max_rel_diff": worst}]
    lines = [f"weight_spectra compute over {len(d.matrix)} matrices (W_E/W_U {'left out' if quick else 'included'}); "
             f"device best of {repeats} "
             "after a warm-up, CPU one call", "",
             *table([f"{device.type} s", "cpu s", "speed-up", *[f"max rel Δ {k}" for k in worst]],
                    [[rows[0]["device_s"], rows[0]["cpu_s"], rows[0]["cpu_over_device"],
                      *[f"{v:.1e}" for v in worst.values()]]])]
    return rows, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model-dir", required=True, help="config.json and tokenizer files of SmolLM2-135M")
    parser.add_argument("--quick", action="store_true", help="2 layers, few tokens, one timed call each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=200.0, help="seconds; later benchmarks are skipped after it")
    args = parser.parse_args(argv)
    started = time.monotonic()
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repeats = 1 if args.quick else args.repeats
    env = env_info(device)
    (out / "env.json").write_text(json.dumps(env, indent=1), encoding="utf-8")
    print(json.dumps(env), flush=True)
    with tempfile.TemporaryDirectory(prefix="smollm2-random-") as folder:
        t0 = time.perf_counter()
        lm = build_model(Path(args.model_dir), device, args.quick, Path(folder))
        print(f"random-weight model: {lm} built in {time.perf_counter() - t0:.1f} s", flush=True)
        texts = common.default_prompts(8 if args.quick else 64)
        benches = {
            "capture_overhead": ("Capture overhead vs bare forward",
                                 lambda: bench_capture(lm, device, texts, repeats)),
            "batched_spectra": ("Batched SVD / eigvalsh, device vs CPU",
                                lambda: bench_spectra(lm, device, texts[:16], repeats, args.quick)),
            "erv_era": ("ERV/ERA, device vs CPU",
                        lambda: bench_erv_era(lm, device, 128 if args.quick else 512, repeats)),
            "weight_spectra": ("weight_spectra analysis, device vs CPU",
                               lambda: bench_weight_spectra(lm, device, 1 if args.quick else 2, args.quick)),
        }
        failed = []
        for name, (title, fn) in benches.items():
            if time.monotonic() - started > args.budget:
                write(out, name, title, env, [], [f"skipped: the {args.budget:.0f} s budget was spent"])
                continue
            t0 = time.perf_counter()
            try:
                rows, lines = fn()
            except Exception as exc:  # one failing benchmark must not lose the others' numbers
                failed.append(name)
                rows, lines = [], [f"FAILED: {type(exc).__name__}: {exc}"]
                import traceback

                traceback.print_exc()
            write(out, name, title, env, rows, lines + ["", f"({time.perf_counter() - t0:.1f} s in all)"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
