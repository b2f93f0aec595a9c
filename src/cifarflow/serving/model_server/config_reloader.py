"""TensorFlow Serving's config (re)load for the one model this server serves.

`apply_first` is what ServerCore::Create does with the first config
(server_core.cc:260-289, tag 2.20.0): the labels are assigned before any
version is loaded, so without --allow_version_labels_for_unavailable_models
any label refuses the start. `reload` is Server::PollFilesystemAndReloadConfig
(server.cc:165-180), run every --model_config_file_poll_wait_seconds: the
file is re-read and ReloadConfig (server_core.cc:476-547) assigns the labels
first and only then changes what is served, so a refused label leaves the
old labels and the old version policy serving, and the error is logged. The
same refusal repeats on every poll until the file changes (the new version is
never loaded, because loading comes after the label check).
"""

from __future__ import annotations

import logging

from cifarflow.serving.errors import InvalidInput, ServingError
from cifarflow.serving.model_server.model import ModelManager
from cifarflow.serving.model_server.periodic import PeriodicTask
from cifarflow.serving.model_server.tf_serving_config import (
    ServedModel,
    ServerStartError,
    TfServingOptions,
    read_model_server_config,
    served_model,
)
from cifarflow.serving.model_server.version_labels import VersionLabels

log = logging.getLogger(__name__)


class ConfigReloader:
    """Applies --model_config_file to a ModelManager at start and on each poll.

    Args:
        options: the TF Serving flags, with the config read at start-up.
        manager: serves the model; its version policy changes on reloads.
        labels: the label map requests by label resolve through.
    """

    def __init__(
        self, options: TfServingOptions, manager: ModelManager, labels: VersionLabels
    ) -> None:
        self.options = options
        self.manager = manager
        self.labels = labels
        self.current: ServedModel = options.model
        self._poller = PeriodicTask(
            "model-config-poller",
            options.config_poll_s,
            self.reload,
            f"reloading {options.model_config_file}",
        )

    def apply_first(self) -> None:
        """Assigns the start-up config's labels (nothing is loaded yet); raises ServerStartError when refused."""
        try:
            self.labels.assign(self.current.labels, self.manager.is_available)
        except ServingError as exc:
            raise ServerStartError(exc) from None

    def reload(self) -> bool:
        """One PollFilesystemAndReloadConfig; False (and logged) when the new config is refused."""
        path = self.options.model_config_file
        try:
            config = read_model_server_config(path)
        except ServingError as exc:
            log.error("Failed to read ModelServerConfig file: %s", exc.message)
            return False
        try:
            new = served_model(config, path)
            self._check_same_model(new)
            self.labels.assign(new.labels, self.manager.is_available)
        except ServingError as exc:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", exc.message)
            return False
        if new != self.current:
            log.info(
                "model config %s reloaded: policy %s, labels %s", path, new.policy, dict(new.labels)
            )
        self.current = new
        self.manager.set_policy(new.policy)
        self.manager.poll()
        return True

    def _check_same_model(self, new: ServedModel) -> None:
        # TF Serving would unload the old model and load the new one; this
        # server serves one model for its lifetime, so it refuses instead.
        if (new.name, new.base_path) != (self.current.name, self.current.base_path):
            raise InvalidInput(
                f"the config now serves {new.name} from {new.base_path}, not {self.current.name} from "
                f"{self.current.base_path}; cifarflow serve model changes neither while running: restart it"
            )

    def start(self) -> ConfigReloader:
        self._poller.start()
        return self

    def stop(self) -> None:
        self._poller.stop()
