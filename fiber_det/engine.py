"""What both trainers share (tools/train_net.py for the detector, tools/train_coarse.py for the
coarse stage): config setup, the fiber_det solver, DDP that also works on the CPU, and
checkpoints read and written through `FiberCheckpointer`."""

import weakref

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_setup,
    hooks,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from fiber_det import solver
from fiber_det.checkpoint import FiberCheckpointer
from fiber_det.config import add_fiber_config
from fiber_det.ema import CHECKPOINT_KEY, EMAHook, WeightsEMA, load_ema_weights
from fiber_det.runtime import keep_freed_memory


def setup_cfg(args) -> CfgNode:
    """Config from `args.config_file` + `args.opts`; falls back to the CPU without CUDA. Also
    keeps freed memory in the heap for reuse (`fiber_det.runtime.keep_freed_memory`)."""
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fiber_det")
    keep_freed_memory()
    return cfg


def load_weights(cfg: CfgNode, model: torch.nn.Module, resume: bool) -> None:
    """Load cfg.MODEL.WEIGHTS (or the last checkpoint in OUTPUT_DIR when `resume`); with
    MODEL.EMA.ENABLED, the checkpoint's `model_ema` weights when it has them."""
    checkpointer = FiberCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    if not cfg.MODEL.EMA.ENABLED:
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
        return
    resumed = resume and checkpointer.has_checkpoint()
    path = checkpointer.get_checkpoint_file() if resumed else cfg.MODEL.WEIGHTS
    load_ema_weights(checkpointer, model, path)


AMP_PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def build_step_trainer(cfg: CfgNode, model, data_loader, optimizer) -> SimpleTrainer:
    """detectron2's loop of training steps: AMPTrainer autocasting to SOLVER.AMP.PRECISION when
    SOLVER.AMP.ENABLED (on CUDA only, as detectron2's AMPTrainer), else SimpleTrainer."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    precision = cfg.SOLVER.AMP.PRECISION
    if precision not in AMP_PRECISIONS:
        raise ValueError(
            f"SOLVER.AMP.PRECISION={precision!r}: one of {sorted(AMP_PRECISIONS)} (bfloat16 "
            "needs an Ampere or newer GPU)"
        )
    if not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ValueError(
            f"SOLVER.AMP.ENABLED with MODEL.DEVICE={cfg.MODEL.DEVICE!r}: detectron2's AMPTrainer "
            "trains on CUDA only; turn AMP off on the CPU"
        )
    return AMPTrainer(model, data_loader, optimizer, precision=AMP_PRECISIONS[precision])


class FiberTrainer(DefaultTrainer):
    """detectron2's DefaultTrainer with the optimizer and schedule of `fiber_det.solver` and
    checkpoints through FiberCheckpointer (fiber_det files only, atomic saves).

    `__init__` is the one override of DefaultTrainer's construction, kept because detectron2
    lacks the knob: its `DefaultTrainer.__init__` wraps the model with
    `create_ddp_model(model, broadcast_buffers=False)`, which always passes
    `device_ids=[local_rank]` (DDP refuses that for CPU modules, so multi-process CPU training
    fails) and no `find_unused_parameters` (the coarse task models need it, see
    `find_unused_parameters`). Every other step is DefaultTrainer's, in its order;
    tests/test_upstream_contracts.py checks that DefaultTrainer still sets the same attributes.

    With MODEL.EMA.ENABLED, `self.ema` averages the weights (fiber_det.ema): checkpoints carry
    it as `model_ema` and evaluation, during and after training, uses it.
    """

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        self.ema = WeightsEMA(model, cfg.MODEL.EMA.DECAY) if cfg.MODEL.EMA.ENABLED else None
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(
            model,
            broadcast_buffers=False,
            device_ids=[comm.get_local_rank()] if cfg.MODEL.DEVICE.startswith("cuda") else None,
            find_unused_parameters=self.find_unused_parameters(cfg),
        )
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = FiberCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        if self.ema is not None:
            self.checkpointer.add_checkpointable(CHECKPOINT_KEY, self.ema)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def evaluation_model(self) -> torch.nn.Module:
        """The EMA weights when enabled, else the trained model."""
        return self.model if self.ema is None else self.ema.module

    def build_hooks(self):
        """DefaultTrainer's hooks; with EMA, its update before the checkpointer and evaluation
        of the EMA weights."""
        default_hooks = super().build_hooks()
        if self.ema is None:
            return default_hooks

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.ema.module)
            return self._last_eval_results

        with_ema = [
            hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, test_and_save_results)
            if isinstance(hook, hooks.EvalHook)
            else hook
            for hook in default_hooks
        ]
        # after IterationTimer, LRScheduler and the PreciseBN slot: the average is up to date
        # when the checkpointer saves and the evaluation runs
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        with_ema.insert(3, EMAHook(self.ema, model))
        return with_ema

    @classmethod
    def find_unused_parameters(cls, cfg: CfgNode) -> bool:
        """Whether DDP must tolerate parameters without gradient in a step."""
        return False

    @classmethod
    def build_optimizer(cls, cfg, model):
        return solver.build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return solver.build_lr_scheduler(cfg, optimizer)
