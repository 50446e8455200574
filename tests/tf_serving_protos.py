"""TF Serving config messages that tensorflow-serving-api does not ship (`BatchingParameters`,
`MonitoringConfig`), built from the vendored official descriptors: see tests/unit/protos/README.md."""

from __future__ import annotations

from functools import cache

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from tests.project import PROJECT

DESCRIPTORS = PROJECT / "tests" / "unit" / "protos" / "tf_serving_configs.binpb"
DEPLOYED_BATCHING = PROJECT / "deploy" / "tf-serving" / "batching.config"


@cache
def message_class(full_name: str) -> type:
    """The message class of `full_name` (e.g. "tensorflow.serving.BatchingParameters")."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in fds.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def batching_parameters(text: str):
    """A batching.config's text (what --batching_parameters_file reads) as a BatchingParameters message."""
    return text_format.Parse(text, message_class("tensorflow.serving.BatchingParameters")())
