"""Every command-line flag of the user-facing commands has help text, and bad usage exits 2 as bad
input does (issue 11.6: one exit code across the CLIs)."""
from __future__ import annotations

import pytest

from dataset_conversion.convert_larc import build_parser as convert_parser
from dataset_conversion.synthetic_larc import build_parser as synthetic_parser
from evaluation.survival_eval import build_parser as evaluation_parser
from nnunet_multitask.predictor import build_parser as predictor_parser


@pytest.mark.parametrize("build", [predictor_parser, evaluation_parser, convert_parser, synthetic_parser],
                         ids=["nnUNetv2_predict_multitask", "survival_eval", "convert_larc", "synthetic_larc"])
def test_every_flag_has_help_and_usage_errors_exit_2(build, capsys):
    parser = build()
    assert [a.option_strings or a.dest for a in parser._actions if not a.help] == []
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--no-such-flag"])
    assert info.value.code == 2
    capsys.readouterr()
