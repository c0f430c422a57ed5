"""A plugin for the executor tests: a backbone whose build appends its process id to the file named by
ZOO_TEST_PID_FILE, so a test can tell which runs shared a process."""
import os

from zoo.backbones import BACKBONES, BackboneSpec, register_backbone
from zoo.backbones.baselines import build_baseline_cnn


def build_recording_pid(input_shape):
    with open(os.environ["ZOO_TEST_PID_FILE"], "a") as handle:
        handle.write(f"{os.getpid()}\n")
    return build_baseline_cnn(input_shape)


if "pid_backbone" not in BACKBONES:
    register_backbone(BackboneSpec(name="pid_backbone", family="test", build=build_recording_pid,
                                   preprocessing="model", default_size=32, min_size=16, output_stride=16, license="-",
                                   paper="-"))
