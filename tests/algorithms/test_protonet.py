import numpy as np
import pytest
import torch
from torch import nn

from metashot.algorithms.protonet import ProtoNet, class_means, sq_euclidean
from metashot.data.episodes import EpisodeSampler
from metashot.data.store import ClassStore


def test_prototypes_and_distances_by_hand():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    y = torch.tensor([0, 0, 1])
    p = class_means(z, y, 2)
    assert torch.equal(p, torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    q = torch.tensor([[1.0, 1.0]])
    assert torch.allclose(sq_euclidean(q, p), torch.tensor([[1.0, 10.0]]))


def test_identity_embedding_classifies_by_nearest_mean():
    learner = ProtoNet(nn.Flatten())
    sx = torch.tensor([[0.0, 0.0], [10.0, 10.0], [0.0, 1.0]])
    sy = torch.tensor([0, 1, 0])
    logits = learner.adapt(sx, sy)(torch.tensor([[1.0, 0.0], [9.0, 9.0]]))
    assert logits.argmax(1).tolist() == [0, 1]
    assert torch.allclose(logits[0], -torch.tensor([1.0 + 0.25, 81.0 + 100.0]))


def test_missing_class_in_support_is_an_error():
    with pytest.raises(ValueError, match="no support example"):
        class_means(torch.zeros(2, 3), torch.tensor([0, 2]), 3)


def test_batched_loss_equals_per_task_reference_in_eval_mode():
    torch.manual_seed(0)
    imgs = torch.randint(0, 255, (60, 1, 8, 8), dtype=torch.uint8)
    store = ClassStore(imgs, np.arange(0, 61, 6), [str(i) for i in range(10)])
    batch = EpisodeSampler(store, 4, 2, 3, seed=1, tasks_per_batch=3).sample(0).to("cpu")
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    learner = ProtoNet(backbone).double().eval()
    batch.support_x, batch.query_x = batch.support_x.double(), batch.query_x.double()
    fast, _ = learner.meta_loss(batch)
    ref, _ = super(ProtoNet, learner).meta_loss(batch)
    assert torch.allclose(fast, ref, rtol=1e-12)
    reference = super(ProtoNet, learner).predict_batch(batch)
    assert torch.allclose(learner.predict_batch(batch), reference, rtol=1e-10)


@pytest.mark.slow
def test_short_omniglot_training_learns(omniglot_train, omniglot_test, tmp_path):
    from metashot.config import Config
    from metashot.evaluate import evaluate
    from metashot.nn.backbones import conv4
    from metashot.train import Trainer

    torch.manual_seed(0)
    learner = ProtoNet(conv4(hidden=16, out_channels=16))
    cfg = Config()
    cfg.train.steps, cfg.train.log_every, cfg.train.lr = 40, 10, 3e-3
    sampler = EpisodeSampler(omniglot_train, 20, 1, 5, seed=0)
    before = evaluate(learner, omniglot_test, 5, 1, 5, episodes=50, progress=False)["acc"]
    Trainer(learner, sampler, cfg, out_dir=tmp_path, progress=False).fit()
    after = evaluate(learner, omniglot_test, 5, 1, 5, episodes=50, progress=False)["acc"]
    assert after > 60.0 and after > before + 20  # chance is 20%
