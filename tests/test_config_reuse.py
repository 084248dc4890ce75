"""A run's own record as a config: `train.py --config outputs/run/config.json` evaluates or trains again
exactly as that run did; it was refused ("unknown section 'resolved_model'"), and so was the file
`--print-config` writes ("model_config")."""

import json

import pytest
from test_train_fakes import make_config

from clipbert.models import ClipBertConfig
from clipbert.train import config as C
from clipbert.train.run import resolved_config, write_resolved_config


def _written(tmp_path, task="msrvtt_ret", **extra):
    cfg = make_config(tmp_path / "run", task=task)
    model = cfg.model_config(**extra)
    write_resolved_config(cfg, model, tmp_path / "run")
    return cfg, tmp_path / "run" / "config.json"


@pytest.mark.parametrize("task, extra", [("msrvtt_ret", {}), ("msrvtt_qa", {"num_answers": 7})])
def test_a_runs_config_json_loads_as_the_config_it_was(tmp_path, task, extra):
    cfg, path = _written(tmp_path, task, **extra)
    again = C.load(path)
    assert again.to_dict() == cfg.to_dict()
    assert (
        again.model_config(**extra).to_dict()
        == ClipBertConfig.from_dict(json.loads(path.read_text())["resolved_model"]).to_dict()
    )


def test_the_print_config_output_loads_too(tmp_path):
    cfg = make_config(tmp_path / "run")
    path = tmp_path / "printed.json"
    path.write_text(json.dumps(resolved_config(cfg), default=str))
    assert C.load(path).to_dict() == cfg.to_dict()


def test_an_edit_of_the_derived_model_section_is_refused_naming_it(tmp_path):
    # the model section decides: an edit of the record would look applied and not be
    _, path = _written(tmp_path)
    raw = json.loads(path.read_text())
    raw["resolved_model"]["hidden_dropout"] = 0.3
    path.write_text(json.dumps(raw))
    with pytest.raises(C.ConfigError, match=r"resolved_model .* hidden_dropout=0.3 \(model: 0.1\)"):
        C.load(path)
    # a --set of the model section changes the model on purpose: the old record is dropped
    assert C.load(path, ["model.hidden_dropout=0.2"]).model_config().hidden_dropout == 0.2


def test_a_hand_edit_of_a_data_key_the_model_follows_says_what_to_do(tmp_path):
    # the message said "change model.* instead" to a user who had edited data.image_size, not the model
    _, path = _written(tmp_path)
    raw = json.loads(path.read_text())
    raw["data"]["image_size"] = 2 * raw["data"]["image_size"]
    path.write_text(json.dumps(raw))
    with pytest.raises(
        C.ConfigError, match=r"built from model\.\*, task\.\*, .*data\.image_size.*remove the"
    ):
        C.load(path)
    del raw["resolved_model"]
    path.write_text(json.dumps(raw))
    assert C.load(path).data.image_size == raw["data"]["image_size"]
