"""Two processes (gloo, detectron2's launch) match one process on the concatenated batch: the ITC
loss and the DDP-averaged gradients; the fused losses and the retrieval evaluator also run."""

import torch
import torch.distributed as dist
from detectron2.engine import launch
from detectron2.utils import comm

from fiber_det.evaluation.retrieval import RetrievalEvaluator
from tests.evaluation.test_retrieval import IMAGES, TEXTS_OF_IMAGE
from tests.modeling.vision_language.test_pretrain_model import build_tiny_model, random_batch

LENGTHS = [5, 7, 6, 9]  # rank 0 gets the first two captions, rank 1 the last two
IMAGE_IDS = ["a", "b", "c", "a"]


def _batch() -> list[dict]:
    torch.manual_seed(1)
    return random_batch(LENGTHS, IMAGE_IDS)


def _itc_loss_and_grads(batch: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_tiny_model(itm_weight=0.0, mlm_weight=0.0).train()
    loss = model(batch)["loss_itc"]
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _evaluator_recalls(indices: range) -> dict:
    """Recalls of the hand-made retrieval set (tests/evaluation) fed with images `indices`."""
    evaluator = RetrievalEvaluator(recall_ks=(1, 2, 3))
    text = {"input_ids": torch.tensor([0, 2]), "attention_mask": torch.ones(2)}
    for index in indices:
        texts = TEXTS_OF_IMAGE[index]
        sample = {"image_id": index, "texts": [text] * len(texts)}
        evaluator.process([sample], [{"image_embedding": IMAGES[index], "text_embeddings": texts}])
    return evaluator.evaluate()


def _worker(out_dir: str) -> None:
    torch.set_num_threads(1)
    rank, world = comm.get_rank(), comm.get_world_size()
    local = _batch()[2 * rank : 2 * rank + 2]
    loss, grads = _itc_loss_and_grads(local)
    for grad in grads.values():  # what DistributedDataParallel does
        dist.all_reduce(grad)
        grad /= world
    torch.manual_seed(2)
    fused = build_tiny_model().train()(local)
    recalls = _evaluator_recalls(range(rank, len(IMAGES), world))
    if rank == 0:
        result = {"loss": loss, "grads": grads, "fused": fused, "recalls": recalls}
        torch.save(result, f"{out_dir}/rank0.pt")


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    launch(_worker, 2, dist_url="auto", args=(str(tmp_path),))
    result = torch.load(tmp_path / "rank0.pt", weights_only=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loss, grads = _itc_loss_and_grads(_batch())
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(result["loss"], loss, rtol=1e-5, atol=1e-6)
    assert set(result["grads"]) == set(grads)
    for name, grad in grads.items():
        error = (result["grads"][name] - grad).abs().max()
        # 1e-5 relative to the tensor; key biases have mathematically zero gradient (noise)
        assert error <= 1e-5 * grad.abs().max() + 1e-8, (name, error)
    assert set(result["fused"]) == {"loss_itc", "loss_itm", "loss_mlm"}
    assert all(torch.isfinite(v) for v in result["fused"].values())
    assert result["recalls"] == _evaluator_recalls(range(len(IMAGES)))
