import pytest

from edgetl.errors import ConfigError
from edgetl.train import freeze
from edgetl.train.backbones import get_spec
from edgetl.train.weights import Weights, load_backbone


@pytest.fixture
def backbone():
    return load_backbone(get_spec("mobilenet_v3_small"), 32, Weights(source="none"))


def _trainable(backbone):
    return {s for s in backbone.stages() if any(p.requires_grad for p in backbone.stage(s).parameters())}


def test_all_none_and_until(backbone):
    stages = backbone.stages()
    assert freeze.apply(backbone, "all") == [] and _trainable(backbone) == set()
    assert freeze.apply(backbone, "none") == stages and _trainable(backbone) == {
        s for s in stages if any(True for _ in backbone.stage(s).parameters())}
    left = freeze.apply(backbone, f"until:{stages[3]}")
    assert left == stages[4:]
    assert not _trainable(backbone) & set(stages[:4])


def test_frozen_batchnorm_keeps_its_statistics(backbone):
    stages = backbone.stages()
    freeze.apply(backbone, f"until:{stages[2]}")
    freeze.set_train_mode(backbone, f"until:{stages[2]}")
    assert not backbone.stage(stages[0]).training and backbone.stage(stages[5]).training


def test_unknown_stage_lists_the_stages(backbone):
    with pytest.raises(ConfigError) as err:
        freeze.apply(backbone, "until:layer9")
    assert backbone.stages()[0] in str(err.value)


def test_unknown_policy_is_refused(backbone):
    with pytest.raises(ConfigError, match="unknown freeze policy"):
        freeze.apply(backbone, "some")
