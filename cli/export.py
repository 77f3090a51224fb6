"""``vlkit export``: thin over :func:`vlkit.apps.export.export_run` (parse, call, print)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlkit.cli.common import OutputOpt, err, table, user_errors, write_json
from vlkit.cli.validate import check_output

CHECK_COLUMNS = ["images", "max_abs_logit_diff", "top1_agreement", "accuracy_python", "accuracy_exported",
                 "accuracy_change"]


@user_errors
def export_command(
    run_dir: Path = typer.Argument(..., help="run folder (`vlkit fit --run-dir` or `vlkit upgrade init`)"),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx or torchscript"),
    out: Path = typer.Option(..., "--out", help="the model file to write: .onnx for ONNX, .pt for TorchScript"),
    int8: bool = typer.Option(False, "--int8", help="dynamic int8 quantisation of the image tower's projections "
                                                   "(onnxruntime's for ONNX, torch.ao's for TorchScript); the head "
                                                   "stays float32; with data, as much is quantised as keeps top-1 "
                                                   "on the train split (else float16 weights, then float32; "
                                                   "TorchScript: float32)"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="check on the test split of this data "
                                       "(default: the run's own; an upgrade run has none)"),
    check_images: int = typer.Option(1000, "--check-images", min=0, help="test images to compare the exported "
                                     "model with the Python path on (0: no check)"),
    output: Optional[Path] = OutputOpt,
) -> None:
    """Export a fitted run as one self-contained model: preprocessed image in, class logits and probabilities out."""
    check_output(out, "--out")
    from vlkit.apps.export import export_run

    result = export_run(run_dir, format=format, int8=int8, out=out, data=data, check_images=check_images)
    table([result], ["method", "model", "format", "int8", "classes", "bytes"], title=f"exported {run_dir}")
    if "check" in result:
        table([result["check"]], CHECK_COLUMNS,
              title=f"exported vs Python path on {result['check_data']}/test")
    err.print(f"wrote {result['out']}: input 'image' (N, 3, H, W) preprocessed, outputs 'logits' and "
              "'probabilities'; class names and preprocessing in its metadata", highlight=False, soft_wrap=True)
    rule = result.get("int8_rule")
    if rule:
        picked = rule.get("selected_on")
        err.print(f"int8: {rule['rule']}" + (f", chosen on {picked['images']} train images (the first of "
                  + ", ".join(f"{t['rule']}: {t['agreement_pct']}% ({t['predicted_agreement_pct']}% predicted)"
                              for t in picked["tried"])
                  + f" to reach {picked['min_agreement_pct']}% top-1 agreement with float32 and "
                  f"{picked['min_predicted_agreement_pct']}% predicted from the margins)" if picked else
                  " (no train images to choose on: the default rule)"), highlight=False, soft_wrap=True)
    for data in result.get("files", [])[1:]:  # past protobuf's 2 GB: the weights sit in a file beside the model
        err.print(f"its weights are in {data} (ONNX external data): keep the two files together",
                  highlight=False, soft_wrap=True)
    write_json(output, result)
