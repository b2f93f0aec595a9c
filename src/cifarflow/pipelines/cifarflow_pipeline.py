"""The cifarflow pipeline: CIFAR-100 from raw archive to a published, gated model.

```
check_store (model store reachable, bucket there, credentials may write)
     |
ingest -> preprocess -> eda      (splits: train, val, gate, test)
              |
              +-> expand_grid -> ParallelFor(trial): train (GPU) -> evaluate
                                                                      |
                          select_best  <------- dsl.Collected --------+
                               |  (McNemar gate against the store's champion, on the gate split)
                               v
                            publish -> model store
exit handler: record_status (runs whatever happened, failures included)
```

Every step is a lightweight component over the project image
(`cifarflow.images`; `PipelineImages` retargets every task at build time);
the same compiled DAG runs under kfp.local and on a Kubeflow cluster. On a
cluster the S3 settings of the steps that touch the model store come from the
ConfigMap `cifarflow-pipeline-settings` and the Secret `cifarflow-model-store`,
which the user creates (docs/kubernetes.md, "Kubeflow Pipelines").

Needs a Kubeflow Pipelines backend of 2.17.0 or newer: `dsl.Collected` over
artifacts and `PipelineTaskFinalStatus` arrive in 2.14.0, and a ParallelFor
inside an ExitHandler reports its state to the exit task only from 2.17.0
(kubeflow/pipelines #11725, #11953, #13322).
"""

# No `from __future__ import annotations`: kfp reads the pipeline's parameter
# types from real annotations, not strings.
from collections.abc import Callable

from kfp import dsl, kubernetes
from kfp.dsl import pipeline_context

from cifarflow.components.check_store.component import check_store_component
from cifarflow.components.check_store.executor import SETTINGS_CONFIG_MAP, STORE_SECRET
from cifarflow.components.eda.component import eda_component
from cifarflow.components.evaluate.component import evaluate_component
from cifarflow.components.expand_grid.component import expand_grid_component
from cifarflow.components.ingest.component import ingest_component
from cifarflow.components.preprocess.component import preprocess_component
from cifarflow.components.publish.component import publish_component
from cifarflow.components.record_status.component import record_status_component
from cifarflow.components.select_best.component import select_best_component
from cifarflow.components.train.component import train_component
from cifarflow.images import PipelineImages
from cifarflow.pipelines.parameters import DEFAULTS

PIPELINE_NAME = "cifarflow"


def _resources(
    task: dsl.PipelineTask, cpu: str, memory: str, cpu_limit: str, memory_limit: str
) -> dsl.PipelineTask:
    return (
        task.set_cpu_request(cpu)
        .set_memory_request(memory)
        .set_cpu_limit(cpu_limit)
        .set_memory_limit(memory_limit)
    )


def _with_store_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """S3 endpoint and keys for tasks that read or write the bucket (ignored by kfp.local).

    Optional on purpose: a missing ConfigMap or Secret would hold the pod in
    CreateContainerConfigError without failing the run; unset variables
    instead fail the store check at once, in one line that names both.
    """
    kubernetes.use_config_map_as_env(
        task,
        SETTINGS_CONFIG_MAP,
        {"S3_ENDPOINT": "S3_ENDPOINT", "S3_SECURE": "S3_SECURE"},
        optional=True,
    )
    kubernetes.use_secret_as_env(
        task,
        STORE_SECRET,
        {"accesskey": "S3_ACCESS_KEY", "secretkey": "S3_SECRET_KEY"},
        optional=True,
    )
    return task


def _use_images(images: PipelineImages) -> None:
    """Every task of the pipeline being built runs `images`, GPU tasks the GPU image.

    Components bake `cpu_image()` in when their module is imported, before
    any flag is read; overriding per task here is what makes
    `--image-repository`/`--image-tag` reach every executor, tasks added
    later included. A task that asks for an accelerator gets the GPU image.
    """
    for task in pipeline_context.Pipeline.get_default_pipeline().tasks.values():
        resources = task.container_spec.resources if task.container_spec else None
        task.set_container_image(
            images.gpu if resources and resources.accelerator_type else images.cpu
        )
        if images.pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(images.pull_secrets))


def build_pipeline(
    trial_parallelism: int = 0,
    gpu_node_selector: dict[str, str] | None = None,
    train_retries: int = 2,
    images: PipelineImages | None = None,
    pipeline_root: str | None = None,
) -> Callable[..., None]:
    """Builds the pipeline function.

    Args:
        trial_parallelism: trials trained at once; 0 means no limit (a cluster
            with enough GPUs). Local runs use 1: one trial already fills the CPU.
        train_retries: retries of a failed train task, with backoff. On a
            cluster a preempted GPU node is the usual cause; see
            docs/training.md for what a retry resumes. Locally a failure is
            a real error.
        gpu_node_selector: node labels the train pods must match, e.g.
            `{"cloud.google.com/gke-accelerator": "nvidia-l4"}`.
        images: the images every task runs, and their pull Secrets; default
            `cifarflow.images` as the environment sets it.
        pipeline_root: where the run's artifacts go (`minio://…`, `s3://…`);
            default: the namespace's, from KFP's `kfp-launcher` ConfigMap.

    Returns:
        The `@dsl.pipeline` function; call it under kfp.local, or compile it.
    """

    images = images or PipelineImages.resolve()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        pipeline_root=pipeline_root,
        description="CIFAR-100 (20 coarse classes): ingest, preprocess, EDA, HP grid on GPU, evaluate, gated publish",
    )
    def cifarflow_pipeline(
        source: str = DEFAULTS.source,
        expected_md5: str = DEFAULTS.expected_md5,
        grid: str = DEFAULTS.grid,
        val_fraction: float = DEFAULTS.val_fraction,
        seed: int = DEFAULTS.seed,
        model_name: str = DEFAULTS.model_name,
        store: str = DEFAULTS.store,
        gate_metric: str = DEFAULTS.gate_metric,
        alpha: float = DEFAULTS.alpha,
        force_publish: bool = DEFAULTS.force_publish,
        gate_fraction: float = DEFAULTS.gate_fraction,
    ) -> None:
        status = record_status_component().set_display_name("record status")
        # Never cached: it describes this run, whatever an earlier one did.
        _resources(status, "100m", "128Mi", "500m", "512Mi").set_caching_options(False)

        with dsl.ExitHandler(status, name="cifarflow-steps"):
            # First: a store that publish (or train's checkpoints) cannot use
            # fails the run now, not after the GPU trials. Never cached.
            check = check_store_component(store=store, model_name=model_name).set_display_name(
                "check store"
            )
            _resources(check, "100m", "256Mi", "500m", "512Mi").set_caching_options(False)
            _with_store_credentials(check)

            ingest = ingest_component(source=source, expected_md5=expected_md5).set_display_name(
                "ingest"
            )
            ingest.after(check)
            _resources(ingest, "1", "2Gi", "2", "4Gi").set_caching_options(True)
            ingest.set_retry(
                2, backoff_duration="30s"
            )  # downloads also resume and retry inside the step
            _with_store_credentials(ingest)

            preprocess = preprocess_component(
                raw=ingest.outputs["dataset"],
                val_fraction=val_fraction,
                seed=seed,
                gate_fraction=gate_fraction,
            ).set_display_name("preprocess")
            _resources(preprocess, "2", "3Gi", "2", "6Gi").set_caching_options(True)

            eda = eda_component(splits=preprocess.outputs["splits"]).set_display_name("eda")
            _resources(eda, "1", "2Gi", "2", "4Gi").set_caching_options(True)

            expand = expand_grid_component(grid=grid).set_display_name("expand grid")
            _resources(expand, "100m", "256Mi", "500m", "512Mi").set_caching_options(False)
            expand.after(check)

            with dsl.ParallelFor(
                expand.output, parallelism=trial_parallelism, name="trials"
            ) as trial:
                # Checkpoints also go to the store: model.path is pod-local, so a retried pod starts empty.
                train = train_component(
                    data=preprocess.outputs["splits"], trial=trial, checkpoint_store=store
                ).set_display_name("train")
                _with_store_credentials(train)
                # The run id (what dsl.PIPELINE_JOB_ID_PLACEHOLDER resolves to) from the label KFP puts
                # on every pod of a run (v2_template.go:420 at 2.17.0), not as an input: KFP's cache key
                # holds the inputs, and unchanged trials must stay cached across runs.
                kubernetes.use_field_path_as_env(
                    train, "CIFARFLOW_RUN_ID", "metadata.labels['pipeline/runid']"
                )
                train.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
                _resources(train, "3", "12Gi", "4", "12Gi")  # fits a 4 vCPU / 16 GiB one-GPU node
                if train_retries:
                    train.set_retry(
                        num_retries=train_retries, backoff_duration="60s", backoff_factor=2.0
                    )
                kubernetes.add_toleration(
                    train, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"
                )
                if gpu_node_selector:
                    for label, value in gpu_node_selector.items():
                        kubernetes.add_node_selector(train, label_key=label, label_value=value)

                evaluate = evaluate_component(
                    data=preprocess.outputs["splits"], model=train.outputs["model"]
                ).set_display_name("evaluate")
                _resources(evaluate, "2", "4Gi", "4", "8Gi")

            select = select_best_component(
                candidates=dsl.Collected(evaluate.outputs["candidate"]),
                # The gate split, to re-score a champion whose recorded predictions are from other data.
                data=preprocess.outputs["splits"],
                metric=gate_metric,
                store=store,
                model_name=model_name,
                alpha=alpha,
                force=force_publish,
            ).set_display_name("select best")
            _resources(select, "1", "2Gi", "2", "4Gi").set_caching_options(False)
            _with_store_credentials(select)

            publish = publish_component(
                model=select.outputs["best"],
                store=store,
                model_name=model_name,
                approved=select.outputs["publish"],
                reason=select.outputs["decision"],
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                data_checksum=ingest.outputs["Output"],
            ).set_display_name("publish")
            _resources(publish, "500m", "1Gi", "1", "2Gi").set_caching_options(False)
            _with_store_credentials(publish)

        _use_images(images)

    return cifarflow_pipeline
