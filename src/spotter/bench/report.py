"""What `spotter bench` prints: the table of every stage's rate and peak memory, the precision `auto` chose,
and the problems that make a run's numbers untrustworthy (any of them fails the bench)."""
from __future__ import annotations

from typing import Any, Callable

from . import inference

E2E_OVER_CEILING_LIMIT = 1.1  # end to end above the ceiling by more than noise means they measure different work


class BenchFailed(ValueError):
    """A stage failed or an invariant of the measurements does not hold."""


def problems(r: dict[str, Any]) -> list[str]:
    """What makes this run's numbers untrustworthy."""
    found = [f"stage {name} failed ({why})" for name, why in r["failed_stages"].items()]
    if "e2e_over_ceiling" in r and r["e2e_over_ceiling"] > E2E_OVER_CEILING_LIMIT:
        found.append(f"end to end ran at {r['e2e_over_ceiling']:.0%} of its own ceiling (limit "
                     f"{E2E_OVER_CEILING_LIMIT:.0%}): the two no longer measure the same work")
    return found


def format_table(r: dict[str, Any]) -> str:
    rss = r["stage_peak_rss_mb"]
    failed = r["failed_stages"]

    def row(stage: str, name: str, rate: Callable[[], str], with_rss: bool = False) -> tuple[str, str, float | None]:
        if stage not in rss:
            return name, "(not run)", None
        if stage in failed:
            return name, f"FAILED: {failed[stage]}", None
        return name, rate(), rss[stage] if with_rss else None

    tifffile = (lambda: f"{r['tifffile_files_per_s']:,.0f} files/s") if "tifffile_files_per_s" in r else \
        (lambda: "not installed")
    rows = [
        row("pack", "packing (Kaggle TIFFs -> memory map, incl. fsync)",
            lambda: f"{r['pack_files_per_s']:,.0f} files/s = {r['pack_mb_per_s']:,.0f} MB/s", True),
        row("pack", "  this disk: write + fsync of a file of the pack's size",
            lambda: f"{r['disk_write_fsync_mb_per_s']:,.0f} MB/s (packing at {r['pack_over_disk']:.0%} of it)"),
        row("pack", "  plain PIL loop, same files", lambda: f"{r['pil_files_per_s']:,.0f} files/s"),
        row("pack", "  tifffile loop, same files", tifffile),
        row("histo_train", "data pipeline alone (with augmentation)", lambda: f"{r['pipeline_img_per_s']:,.0f} img/s"),
        row("histo_train", "matmul 2048x2048", lambda: f"fp32 {r['matmul_fp32_gflops']:,.0f} GFLOP/s, bf16 "
            f"{r['matmul_bf16_gflops']:,.0f} GFLOP/s; the model runs in {r['precision']}"),
        row("histo_train", "training ceiling (the end-to-end batches, in memory)",
            lambda: f"{r['train_ceiling_img_per_s']:,.0f} img/s ({r['train_gflops']:,.0f} GFLOP/s, "
                    f"{r['ceiling_over_matmul']:.0%} of {r['precision']} matmul)", True),
        row("histo_train", f"training end to end ({r.get('model', 'resnet')}, {r.get('crop', 80)} px)",
            lambda: f"{r['train_e2e_img_per_s']:,.0f} img/s ({r['e2e_over_ceiling']:.0%} of ceiling)"),
        row("histo_train", "training, per-file DataLoader (PIL decode each epoch, 2 workers)",
            lambda: f"{r['train_perfile_img_per_s']:,.0f} img/s (end to end is {r['e2e_over_perfile']:.1f}x)"),
        row("histo_infer", "inference", lambda: f"{r['infer_img_per_s']:,.0f} img/s ({r['infer_precision']})", True),
        row("histo_infer", "inference, 8x TTA", lambda: f"{r['infer_tta_img_per_s']:,.0f} img/s"),
        row("tweets", "tweets training (bigru)", lambda: f"{r['tweets_train_per_s']:,.0f} tweets/s", True),
        row("tweets", "tweets inference", lambda: f"{r['tweets_infer_per_s']:,.0f} tweets/s"),
        row("slide", "whole slide: mosaic of real patches, stride 32, read + infer",
            lambda: f"{r['slide_tiles_per_s_read_and_infer']:,.0f} tiles/s ({r['slide_fraction_of_in_memory']:.0%} "
                    f"of the same model on in-memory batches, {r['slide_in_memory_tiles_per_s']:,.0f})", True),
        row("slide", "  end to end incl. tissue mask and outputs",
            lambda: f"{r['slide_tiles_per_s_end_to_end']:,.0f} tiles/s; tissue mask {r['slide_tissue_mask_s']:.1f} s"),
    ]
    if "effnet" in rss:
        effnet = r.get("effnet_model", "effnet-lite0")
        rows += [
            row("effnet", f"{effnet} training end to end (96 px, batch {r.get('effnet_batch', 128)})",
                lambda: f"{r['effnet_train_img_per_s']:,.0f} img/s ({r['effnet_precision']})", True),
            row("effnet", f"{effnet} inference",
                lambda: f"{r['effnet_infer_img_per_s']:,.0f} img/s ({r['effnet_infer_precision']})"),
            row("effnet", f"{effnet} inference, 8x TTA", lambda: f"{r['effnet_infer_tta_img_per_s']:,.0f} img/s"),
            row("minilm", "MiniLM fine-tuning (batch 32)",
                lambda: f"{r['minilm_train_per_s']:,.0f} tweets/s ({r['minilm_precision']})", True),
            row("minilm", "MiniLM inference (= minilm-frozen's embedding pass)",
                lambda: f"{r['minilm_infer_per_s']:,.0f} tweets/s"),
        ]
    if "scale" in rss:
        rows.append(row("scale", f"training from a {r.get('scale_patches', 0):,}-patch pack "
                                 f"({r.get('scale_pack_gb', 0):.1f} GB)",
                        lambda: f"{r['scale_img_per_s']:,.0f} img/s (windows {min(r['scale_img_per_s_windows']):,.0f}"
                                f"-{max(r['scale_img_per_s_windows']):,.0f}; an epoch {r['scale_epoch_s'] / 60:.1f} min)",
                        True))
    lines = [f"{r['cpu']}, {r['cpu_threads']} CPU threads, torch {r['torch']}, device {r.get('device', '?')}", "",
             "| stage | rate | peak RSS |", "|---|---|---|"]
    lines += [f"| {name} | {rate} | {'' if mb is None else f'{mb:,.0f} MB'} |" for name, rate, mb in rows]
    lines += jpeg_slide_table(r) + inference.format_table(r.get("inference", []))
    lines += _decisions(r) + [f"PROBLEM: {problem}" for problem in r.get("problems", [])]
    return "\n".join(lines)


def jpeg_slide_table(r: dict[str, Any]) -> list[str]:
    """Read + infer on a JPEG pyramid against the same model in memory, and where the slide's time went."""
    slides = [v for k, v in r.items() if k.startswith("jpeg_slide_")]
    if not slides:
        return []
    lines = ["", "whole slide on a JPEG-compressed pyramid (stride 32; stages: seconds, decode and resample "
                 "summed over the reading workers):", "",
             "| model | backend | read + infer | in memory | ratio | decode / resample / copy / infer / waiting s |",
             "|---|---|---|---|---|---|"]
    for s in slides:
        st = s["stages"]
        lines.append(f"| {s['model']} | {s['backend']} ({s['precision']}) | {s['tiles_per_s_read_and_infer']:,.0f} "
                     f"tiles/s | {s['in_memory_tiles_per_s']:,.0f} tiles/s | {s['fraction_of_in_memory']:.0%} | "
                     f"{st['decode']:.1f} / {st['resample']:.1f} / {st['copy']:.1f} / {st['infer']:.1f} / "
                     f"{st['waiting']:.1f} ({s['workers']} workers) |")
    return lines


def _decisions(r: dict[str, Any]) -> list[str]:
    """The precision `auto` chose for each model in this run, and why."""
    decisions = [(what, r.get(p), r.get(f"{p}_reason")) for what, p in
                 (("scratch CNN training", "precision"), ("scratch CNN inference", "infer_precision"),
                  ("EfficientNet training", "effnet_precision"), ("EfficientNet inference", "effnet_infer_precision"),
                  ("MiniLM fine-tuning", "minilm_precision")) if r.get(p)]
    return ["", "precision auto:"] + [f"  {what}: {p} ({why})" for what, p, why in decisions] if decisions else []
