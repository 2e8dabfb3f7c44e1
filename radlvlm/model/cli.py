"""``radlvlm convert …``: bring LLaVA-Rad / LLaVA-1.5 checkpoints in, export HF Llava out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from radlvlm.cli_support import fail, run_guarded, stderr

convert_app = typer.Typer(help="Convert checkpoints: LLaVA-Rad / LLaVA-1.5 in, HF Llava (for vLLM) out.")

ExistingDir = Annotated[Path, typer.Option(exists=True, file_okay=False, dir_okay=True, readable=True)]
ExistingFile = Annotated[Path, typer.Option(exists=True, file_okay=True, dir_okay=False, readable=True)]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Directory to write (must be empty or absent).")]


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise fail(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise fail(f"{out}: not empty (pass --overwrite to write into it)")


@convert_app.command("llava-rad")
def convert_llava_rad_command(
    model: Annotated[
        Path,
        typer.Option(exists=True, file_okay=False, help="LLaVA-Rad directory (adapter + non_lora_trainables.bin)."),
    ],
    base: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Vicuna-7B-v1.5 base directory (HF Llama).")],
    vision_checkpoint: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="BiomedCLIP-CXR 518 open_clip checkpoint.")
    ],
    out: OutDir,
    vision_config: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="The tower's open_clip config (default: the JSON beside the checkpoint)."
        ),
    ] = None,
    overwrite: bool = False,
) -> None:
    """LLaVA-Rad as published → a radlvlm model directory (LoRA merged, DINOv2 tower, LLaVA-Rad's prompt)."""
    from radlvlm.model.convert import convert_llava_rad

    _check_out(out, overwrite)
    written = run_guarded(lambda: convert_llava_rad(model, base, vision_checkpoint, out, vision_config=vision_config))
    stderr.print(f"converted LLaVA-Rad → {written}", highlight=False)


@convert_app.command("llava-1.5")
def convert_llava15_command(
    model: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Original-layout LLaVA-1.5 directory.")],
    vision_tower: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="Local HF CLIP vision tower directory.")
    ],
    out: OutDir,
    overwrite: bool = False,
) -> None:
    """Original-layout LLaVA-1.5 (llava_llama) → a radlvlm model directory."""
    from radlvlm.model.convert import convert_llava15

    _check_out(out, overwrite)
    written = run_guarded(lambda: convert_llava15(model, vision_tower, out))
    stderr.print(f"converted LLaVA-1.5 → {written}", highlight=False)


@convert_app.command("export-hf")
def export_hf_command(
    model: Annotated[Path, typer.Option(exists=True, file_okay=False, help="A radlvlm model directory.")],
    out: OutDir,
    adapter: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="A peft LoRA adapter to merge.")
    ] = None,
    overwrite: bool = False,
) -> None:
    """A radlvlm model (with an optional LoRA adapter, merged) → plain HF Llava for vLLM / transformers."""
    from radlvlm.model.convert import export_hf_llava
    from radlvlm.model.pretrained import load_pretrained

    _check_out(out, overwrite)

    def job() -> Path:
        loaded, processor = load_pretrained(model, adapter=adapter)
        return export_hf_llava(loaded, processor, out)

    written = run_guarded(job)
    stderr.print(f"exported HF Llava → {written}", highlight=False)
