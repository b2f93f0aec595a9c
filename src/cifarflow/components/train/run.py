"""One trial's training loop as an object whose parts can be called one by one.

`TrainingRun` holds what the loop shares (model, schedule, state, data) so
each step is a short method: `train_epoch` (fit one epoch and score val),
`record` (history and the best epoch), `after_epoch` (budget, checkpoint,
stopping) and `finish` (best weights back, temperature). `executor.train`
drives it; the tests call the parts on their own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from cifarflow.calibration import negative_log_likelihood
from cifarflow.classes import NUM_FINE_CLASSES
from cifarflow.components.train import budget, checkpointing, device, ema
from cifarflow.components.train.config import TrialConfig
from cifarflow.components.train.data import TrainingData
from cifarflow.components.train.models import BuiltModel, build_model
from cifarflow.components.train.models.build import FINE_LOGITS_LAYER, LOGITS_LAYER
from cifarflow.components.train.schedules import WarmupSchedule
from cifarflow.errors import BadInputError

if TYPE_CHECKING:  # the S3 client stays out of bench/gpu_probe.py's imports
    from cifarflow.components.train.durable_checkpoints import Disabled, DurableCheckpoints

LIVE, AVERAGE = "live", "ema"


def make_optimizer(config: TrialConfig, schedule: WarmupSchedule) -> keras.optimizers.Optimizer:
    """The trial's optimizer, keeping a weight average when `ema_momentum` is set."""
    averaging: dict[str, Any] = {}
    if config.ema_momentum > 0:
        averaging = {"use_ema": True, "ema_momentum": config.ema_momentum}
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            schedule, momentum=config.momentum, nesterov=True, **averaging
        )
    elif config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(schedule, **averaging)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay, **averaging)
    if averaging:
        ema.keep_live_weights_after_fit(optimizer)
    return optimizer


def compile_for_training(
    built: BuiltModel, config: TrialConfig, schedule: WarmupSchedule, jit_compile: bool
) -> None:
    """Compiles the training model with the trial's loss (and the fine head's, if any).

    Raises:
        RuntimeError: compiling was asked for and Keras turned it off (a layer
            that does not support it).
    """
    loss = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=config.label_smoothing
    )
    model = built.training
    if not built.has_fine_head:
        model.compile(
            optimizer=make_optimizer(config, schedule),
            loss=loss,
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
    else:
        model.compile(
            optimizer=make_optimizer(config, schedule),
            loss={LOGITS_LAYER: loss, FINE_LOGITS_LAYER: loss},
            loss_weights={LOGITS_LAYER: 1.0, FINE_LOGITS_LAYER: config.fine_label_weight},
            metrics={LOGITS_LAYER: ["accuracy"]},
            jit_compile=jit_compile,
        )
    if jit_compile and not model.jit_compile:
        # Keras falls back silently (with a warning) when one layer does not support it.
        raise RuntimeError(f"{model.name}: Keras refused jit_compile=True")


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(labels), classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def training_targets(built: BuiltModel, data: TrainingData) -> Any:
    """The targets `fit` expects: coarse one-hot, plus fine one-hot with a fine head."""
    coarse = one_hot(data.train_coarse, len(data.class_names))
    if not built.has_fine_head:
        return coarse
    return {LOGITS_LAYER: coarse, FINE_LOGITS_LAYER: one_hot(data.train_fine, NUM_FINE_CLASSES)}


def whole_batches(count: int, batch_size: int, rng: np.random.Generator) -> np.ndarray | None:
    """Indices of a random subset of whole batches, or None when `count` divides evenly.

    A compiled step is compiled per input shape: a last, smaller batch would
    compile the step a second time. Dropping a different few images each epoch
    costs nothing measurable and keeps one shape.
    """
    if count % batch_size == 0 or count < batch_size:
        return None
    return np.sort(rng.permutation(count)[: count - count % batch_size])


def steps_per_epoch(count: int, batch_size: int, jit_compile: bool) -> int:
    """Optimizer steps in one epoch (whole batches only when the step is compiled)."""
    if jit_compile and count >= batch_size:
        return count // batch_size
    return math.ceil(count / batch_size)


def predict_logits(model: keras.Model, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float32)


def val_scores(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(negative log-likelihood, accuracy) of logits against labels."""
    return negative_log_likelihood(logits, labels), float((logits.argmax(axis=1) == labels).mean())


def update_best(
    state: checkpointing.TrainingState, epoch: int, accuracies: dict[str, float]
) -> str | None:
    """Marks the epoch as the best when one of its views beats the best so far.

    Args:
        state: the loop's state (updated in place).
        epoch: the epoch (1-based).
        accuracies: val accuracy per view ("live" weights, "ema" weights).

    Returns:
        The view that improved on the best ("live" wins ties), or None.
    """
    view = max(accuracies, key=lambda name: (accuracies[name], name == LIVE))
    if accuracies[view] > state.best_val_accuracy:
        state.best_val_accuracy, state.best_epoch = accuracies[view], epoch
        state.epochs_without_gain = 0
        state.best_is_ema = view == AVERAGE
        return view
    state.epochs_without_gain += 1
    return None


def epoch_line(epoch: int, planned: int, row: dict[str, Any], best_epoch: int, best: float) -> str:
    average = f"  ema_val_acc {row['ema_val_accuracy']:.4f}" if "ema_val_accuracy" in row else ""
    return (
        f"epoch {epoch}/{planned}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}{average}  "
        f"lr {row['learning_rate']:.5f}  {row['seconds']:.0f}s  (best {best:.4f} @ {best_epoch})"
    )


class TrainingRun:
    """One trial being trained: model, schedule, loop state and where checkpoints go.

    Args:
        data: train and val arrays.
        config: the trial.
        out: the trial's output folder (its `checkpoint/` holds the resume state).
        log: where progress lines go.
        durable: the checkpoint store's copy (or `Disabled`).
        jit_compile: compile the train step (see `device.use_jit_compile`).
    """

    def __init__(
        self,
        data: TrainingData,
        config: TrialConfig,
        out: Path,
        log: Callable[[str], None],
        durable: DurableCheckpoints | Disabled,
        jit_compile: bool,
    ) -> None:
        self.data, self.config, self.out, self.log = data, config, out, log
        self.durable = durable
        self.jit_compile = jit_compile
        self.ckpt_dir = out / checkpointing.CHECKPOINT_DIR
        durable.restore(self.ckpt_dir)
        state = checkpointing.load_state(self.ckpt_dir)
        if state is not None and state.trial != config.to_dict():
            # Resuming someone else's trial would silently mix two experiments.
            raise BadInputError(
                f"{out} holds a checkpoint of a different trial; use a fresh --out or delete {self.ckpt_dir}"
            )
        self.resumed = state is not None
        self.state = state or checkpointing.TrainingState(
            planned_epochs=config.epochs, trial=config.to_dict()
        )
        self.built = build_model(
            config, data.pixel_mean, data.pixel_std, num_classes=len(data.class_names)
        )
        self.steps_per_epoch = steps_per_epoch(
            len(data.train_images), config.batch_size, jit_compile
        )
        self.schedule = WarmupSchedule(
            config.learning_rate,
            total_steps=self.state.planned_epochs * self.steps_per_epoch,
            warmup_steps=round(config.warmup_epochs * self.steps_per_epoch),
            kind=config.schedule,
        )
        compile_for_training(self.built, config, self.schedule, jit_compile)
        self.targets = training_targets(self.built, data)
        self.averaging = config.ema_momentum > 0
        self.budget_seconds = config.time_budget_minutes * 60.0
        # The next epoch compiles the step (first in this process, or after a re-plan).
        self.compiles_next = True
        self._rng = np.random.default_rng([config.seed, self.state.epochs_done])
        if self.resumed:
            checkpointing.restore_checkpoint(self.ckpt_dir, self.model)
            log(
                f"resuming from {self.ckpt_dir}: {self.state.epochs_done} of "
                f"{self.state.planned_epochs} epochs done"
            )

    @property
    def model(self) -> keras.Model:
        return self.built.training

    @property
    def inference(self) -> keras.Model:
        return self.built.inference

    @property
    def done(self) -> bool:
        return self.state.epochs_done >= self.state.planned_epochs

    def header(self, policy: str) -> str:
        """The run's first line: model, data, precision, device and whether the step is compiled."""
        data = self.data
        return (
            f"{self.model.name}, {self.model.count_params():,} parameters, "
            f"{len(data.train_images):,} train / {len(data.val_images):,} val images, {policy} on "
            f"{device.backend()} ({device.describe_device()}), {compiled_words(self.jit_compile)}"
        )

    def learning_rate(self) -> float:
        """The learning rate of the last step taken."""
        step = max(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - 1, 0)
        return float(keras.ops.convert_to_numpy(self.schedule(step)))

    def train_epoch(self) -> dict[str, Any]:
        """Fits one epoch and scores val (and the weight average's val); returns its history row."""
        epoch = self.state.epochs_done
        started = time.monotonic()
        images, targets = self.data.train_images, self.targets
        if self.jit_compile:
            keep = whole_batches(len(images), self.config.batch_size, self._rng)
            if keep is not None:
                images = images[keep]
                targets = (
                    {k: v[keep] for k, v in targets.items()}
                    if isinstance(targets, dict)
                    else targets[keep]
                )
        fit = self.model.fit(
            images,
            targets,
            batch_size=self.config.batch_size,
            initial_epoch=epoch,
            epochs=epoch + 1,
            shuffle=True,
            verbose=0,
        )
        logs = {k: float(v[-1]) for k, v in fit.history.items()}
        val_loss, val_accuracy = val_scores(
            predict_logits(self.inference, self.data.val_images), self.data.val_coarse
        )
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": logs["loss"],
            "accuracy": logs[next(k for k in logs if k.endswith("accuracy"))],
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
        }
        if self.averaging:
            with ema.swapped_in(self.model):
                logits = predict_logits(self.inference, self.data.val_images)
            row["ema_val_loss"], row["ema_val_accuracy"] = val_scores(logits, self.data.val_coarse)
        row["learning_rate"] = self.learning_rate()
        row["seconds"] = time.monotonic() - started
        return row

    def record(self, row: dict[str, Any]) -> str | None:
        """Adds the row to the state; returns the view that is the new best, if any."""
        accuracies = {LIVE: row["val_accuracy"]}
        if "ema_val_accuracy" in row:
            accuracies[AVERAGE] = row["ema_val_accuracy"]
        improved = update_best(self.state, row["epoch"], accuracies)
        self.state.history.append(row)
        self.state.epochs_done = row["epoch"]
        self.state.train_seconds += row["seconds"]
        seconds = self.state.compiling_seconds if self.compiles_next else self.state.steady_seconds
        seconds.append(row["seconds"])
        self.compiles_next = False
        return improved

    def replan(self) -> None:
        """Applies the time budget's plan (see `budget`); a change recompiles the step."""
        if self.budget_seconds <= 0:
            return
        state = self.state
        plan = budget.plan_epochs(
            budget_seconds=self.budget_seconds,
            spent_seconds=state.train_seconds,
            epochs_done=state.epochs_done,
            planned_epochs=state.planned_epochs,
            steady_seconds=state.steady_seconds,
            planned=state.budget_planned,
            compiling_seconds=state.compiling_seconds,
        )
        if plan.planned and not state.budget_planned:
            self.log(
                f"time budget planned: {plan.epoch_seconds:.1f}s per epoch, "
                f"{plan.planned_epochs} epochs (configured {state.planned_epochs})"
            )
        elif plan.changed:
            self.log(
                f"time budget, {plan.epoch_seconds:.1f}s per epoch leaves room for "
                f"{plan.planned_epochs} epochs (planned {state.planned_epochs})"
            )
        state.budget_planned = plan.planned
        if plan.changed:
            state.planned_epochs = plan.planned_epochs
            self.schedule.total_steps = max(plan.planned_epochs * self.steps_per_epoch, 1)
            # The schedule's constants are baked into the compiled step: rebuild it.
            self.model.make_train_function(force=True)
            self.compiles_next = True

    def save_checkpoint(self, improved: str | None) -> None:
        """Writes the epoch's checkpoint; its time is charged to the clock."""
        started = time.monotonic()
        checkpointing.save_checkpoint(self.ckpt_dir, self.model, self.state, improved == LIVE)
        if improved == AVERAGE:
            with ema.swapped_in(self.model):
                checkpointing.save_best_weights(self.ckpt_dir, self.model)
        self.durable.save(self.ckpt_dir, self.state.epochs_done)
        self.state.train_seconds += time.monotonic() - started

    def stop_reason(self) -> str | None:
        """Why the loop should stop before its plan, or None."""
        state, patience = self.state, self.config.early_stopping_patience
        if self.done:
            return None
        if budget.budget_spent(self.budget_seconds, state.train_seconds):
            return f"time budget of {self.config.time_budget_minutes:g} min spent"
        if patience and state.epochs_without_gain >= patience:
            return f"no val-accuracy gain for {patience} epochs"
        return None

    def after_epoch(self, row: dict[str, Any], improved: str | None) -> str | None:
        """Logs, re-plans and checkpoints after an epoch; returns a reason to stop early."""
        state = self.state
        self.log(
            epoch_line(
                row["epoch"], state.planned_epochs, row, state.best_epoch, state.best_val_accuracy
            )
        )
        self.replan()
        self.save_checkpoint(improved)
        return self.stop_reason()

    def run(self) -> bool:
        """Trains until the plan is done or a reason to stop; returns whether it stopped early."""
        while not self.done:
            row = self.train_epoch()
            reason = self.after_epoch(row, self.record(row))
            if reason:
                self.log(f"stopping early: {reason}")
                return True
        return False

    def load_best(self) -> None:
        """Puts the best epoch's weights (live or averaged) into the model."""
        self.model.load_weights(self.ckpt_dir / checkpointing.BEST_WEIGHTS)


def compiled_words(jit_compile: bool) -> str:
    """How the header and the summary say whether the train step is compiled."""
    if not jit_compile:
        return "train step not compiled"
    return "train step compiled (" + ("XLA" if device.backend() == "tensorflow" else "jit") + ")"
