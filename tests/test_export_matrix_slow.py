"""Export parity for every registered method (issue 20's must-show), in both formats and with int8.

float32 (test-tiny, 100 colour squares): the exported logits equal the Python path's within
1e-4 of the logit range, or the method is refused in one line. int8 (ONNX, vlkit-mini,
100 Fashion-MNIST test images): top-1 agrees with the Python path on >= 99 %.
"""
from __future__ import annotations

import pytest

from test_export import (HAS_ORT, assert_int8_agreement, assert_parity, check_images,  # noqa: F401 - fixtures
                         mini_setup, needs_onnx)
from vlkit.apps.export.heads import NOT_FOLDABLE
from vlkit.methods import list_methods

pytestmark = pytest.mark.slow
FORMATS = ["onnx", "torchscript"] if HAS_ORT else ["torchscript"]


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("name", list_methods())
def test_every_method_exports_with_parity_or_says_why(name, format, colour_task, colour_adapt_task, tiny_backbone,
                                                      check_images, tmp_path):
    assert_parity(name, colour_task, colour_adapt_task, tiny_backbone, check_images, tmp_path, format)


@needs_onnx
@pytest.mark.parametrize("name", [n for n in list_methods() if n not in NOT_FOLDABLE])
def test_every_method_int8_agrees_on_top1(name, mini_setup, tmp_path):
    assert_int8_agreement(name, mini_setup, tmp_path, "onnx")
