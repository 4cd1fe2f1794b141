"""Wake word on the device: microWakeWord streaming models.

One shared feature frontend (pymicro-features: 40 log-mel features every 10 ms, the one the models were
trained on) feeds every model; each model is a streaming ``.tflite`` that keeps its state inside the
interpreter between invocations and eats ``stride`` feature frames per call (3 = 30 ms). A model fires when
the mean of its last ``sliding_window`` probabilities exceeds its cutoff; after a detection every model is
quiet for ``refractory`` seconds.

Interpreter, in order of preference (``runtime = "auto"``): the TensorFlow Lite C library bundled in the
``pymicro-wakeword`` wheel (the reference: the one pymicro-wakeword itself runs, and the only one with 32-bit
ARM builds), then the LiteRT interpreter (``ai-edge-litert``), then ``tflite_runtime``. LiteRT is cheaper but
its probabilities differ from the reference's by up to 0.07 on the same audio (bench listening_accuracy).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from appliance.audio.base import CAPTURE_RATE
from appliance.settings.listening import WakeWordModel

log = logging.getLogger(__name__)

FEATURE_STEP = 160  # samples per feature frame (10 ms)
FEATURES = 40  # log-mel features per frame
# What the direct call into pymicro-wakeword's TFLite library reads of its model (2.1's attribute names).
_DIRECT_ATTRIBUTES = (
    "lib interpreter input_tensor output_tensor input_scale input_zero_point output_scale output_zero_point"
    " input_dtype output_dtype"
).split()


class WakeWordError(RuntimeError):
    """A wake word model cannot be used; the message names the model and what is wrong."""


@dataclass(frozen=True)
class WakeWordSpec:
    id: str
    phrase: str
    model_path: Path
    probability_cutoff: float
    sliding_window: int
    languages: tuple[str, ...] = ()


@dataclass(frozen=True)
class WakeDetection:
    """A wake word was heard; ``at`` is the detector's audio clock (seconds of audio processed)."""

    id: str
    phrase: str
    probability: float
    at: float


class WakeWordDetector(Protocol):
    name: str

    def process(self, block: np.ndarray) -> WakeDetection | None: ...

    def refuse(self) -> None: ...

    def reset(self) -> None: ...


def bundled_models_dir() -> Path | None:
    spec = importlib.util.find_spec("pymicro_wakeword")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models"
        if candidate.is_dir():
            return candidate
    return None


def bundled_model_names() -> list[str]:
    directory = bundled_models_dir()
    return sorted(p.stem for p in directory.glob("*.json")) if directory else []


def resolve_model(entry: WakeWordModel) -> WakeWordSpec:
    """A bundled name, a manifest (.json, model path inside is relative to it) or a .tflite with a .json beside it."""
    name = entry.model
    manifest: Path
    if "/" not in name and not name.endswith((".json", ".tflite")):
        directory = bundled_models_dir()
        if directory is None:
            raise WakeWordError(f"wake word {name!r}: the pymicro-wakeword package (bundled models) is not installed")
        manifest = directory / f"{name}.json"
        if not manifest.exists():
            raise WakeWordError(
                f"wake word {name!r} is not bundled (bundled: {', '.join(bundled_model_names()) or 'none'}); "
                "give a path to a model's .json manifest instead"
            )
    else:
        path = Path(name).expanduser()
        manifest = path.with_suffix(".json") if path.suffix == ".tflite" else path
        if not manifest.exists():
            raise WakeWordError(f"wake word manifest {manifest} does not exist")
    try:
        data = json.loads(manifest.read_text())
        micro = data["micro"]
        model_path = (manifest.parent / data["model"]).resolve()
        cutoff = float(entry.probability_cutoff or micro["probability_cutoff"])
        window = int(entry.sliding_window or micro["sliding_window_size"])
        phrase = str(data.get("wake_word") or model_path.stem)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WakeWordError(f"wake word manifest {manifest} is not a microWakeWord manifest: {exc!r}") from None
    if data.get("type", "micro") != "micro":
        raise WakeWordError(f"wake word manifest {manifest} is for {data.get('type')!r} models, not microWakeWord")
    if not model_path.exists():
        raise WakeWordError(f"wake word model {model_path} (named in {manifest}) does not exist")
    return WakeWordSpec(
        id=model_path.stem,
        phrase=phrase,
        model_path=model_path,
        probability_cutoff=cutoff,
        sliding_window=window,
        languages=tuple(data.get("trained_languages", ())),
    )


# --- interpreters -------------------------------------------------------------------------------------------


class _Runner(Protocol):
    stride: int

    def invoke(self, features: np.ndarray) -> float: ...

    def reset(self) -> None: ...


class _InterpreterRunner:
    """A streaming model on a Python TFLite interpreter (LiteRT or tflite_runtime)."""

    def __init__(self, interpreter_class: Any, path: Path) -> None:
        self._cls = interpreter_class
        self._path = path
        self._load()

    def _load(self) -> None:
        self._it = self._cls(model_path=str(self._path), num_threads=1)
        self._it.allocate_tensors()
        inp = self._it.get_input_details()[0]
        out = self._it.get_output_details()[0]
        self.stride = int(inp["shape"][1])
        self._in_index, self._out_index = inp["index"], out["index"]
        self._in_dtype = inp["dtype"]
        self._in_scale, self._in_zero = inp["quantization"]
        self._out_scale, self._out_zero = out["quantization"]
        if not self._in_scale:
            raise WakeWordError(f"{self._path} is not a quantized streaming microWakeWord model")

    def invoke(self, features: np.ndarray) -> float:
        quantized = np.round(features / self._in_scale + self._in_zero).astype(self._in_dtype)[np.newaxis]
        self._it.set_tensor(self._in_index, quantized)
        self._it.invoke()
        raw = self._it.get_tensor(self._out_index)
        return float((float(raw.reshape(-1)[0]) - self._out_zero) * self._out_scale)

    def reset(self) -> None:
        self._load()  # the streaming state lives in the interpreter's variables


class _PymicroRunner:
    """The reference (the default): pymicro-wakeword's ctypes binding to its bundled TensorFlow Lite C library.
    One model run is one call into the library with all ``stride`` frames, not the wrapper's call per 10 ms frame
    (with ``statistics.mean`` over a window of one): the same float32 arithmetic, so the same probabilities."""

    def __init__(self, spec: WakeWordSpec) -> None:
        from pymicro_wakeword import MicroWakeWord

        lib_dir = Path(importlib.util.find_spec("pymicro_wakeword").submodule_search_locations[0]) / "lib"  # type: ignore[union-attr,index]
        lib = next(iter(lib_dir.glob("*tensorflowlite_c.*")), None)
        if lib is None:
            raise WakeWordError("pymicro-wakeword has no TensorFlow Lite library for this platform")
        self._model = MicroWakeWord(
            spec.id,
            wake_word=spec.phrase,
            tflite_model=spec.model_path,
            probability_cutoff=spec.probability_cutoff,
            sliding_window_size=1,
            trained_languages=list(spec.languages),
            libtensorflowlite_c_path=lib,
        )
        self.stride = int(self._model.stride)
        self._direct = all(hasattr(self._model, a) for a in _DIRECT_ATTRIBUTES)
        self._bind()

    def _bind(self) -> None:
        """Buffers for the direct call, bound to the model's current interpreter (a reset makes a new one)."""
        if not self._direct:
            return
        m = self._model
        self._scaled = np.zeros((self.stride, FEATURES), dtype=np.float32)
        self._quantized = np.zeros((self.stride, FEATURES), dtype=m.input_dtype)
        self._output = np.zeros(
            int(m.lib.TfLiteTensorByteSize(m.output_tensor)) // np.dtype(m.output_dtype).itemsize, dtype=m.output_dtype
        )
        self._in_ptr, self._out_ptr = self._quantized.ctypes.data, self._output.ctypes.data
        self._calls = (m.lib.TfLiteTensorCopyFromBuffer, m.lib.TfLiteInterpreterInvoke, m.lib.TfLiteTensorCopyToBuffer)
        self._tensors = (m.input_tensor, m.interpreter, m.output_tensor)
        # pymicro-wakeword's dequantization, (output - zero point) * scale in float32, for every possible output
        # byte at once: a look-up per run instead of three numpy temporaries.
        raw = np.arange(np.iinfo(m.output_dtype).min, np.iinfo(m.output_dtype).max + 1)
        values = (raw.astype(m.output_dtype).astype(np.float32) - m.output_zero_point) * m.output_scale
        self._probability = dict(zip(raw.tolist(), values.tolist(), strict=True))

    def invoke(self, features: np.ndarray) -> float:
        if not self._direct or features.shape != self._scaled.shape:
            prob = 0.0
            for frame in features:
                prob = self._model.process_streaming_prob(frame.reshape(1, 1, -1)) or 0.0
            return float(prob)
        m, scaled = self._model, self._scaled
        # pymicro-wakeword's quantization, in place: round(features / scale + zero point) in float32.
        np.divide(features, m.input_scale, out=scaled)
        np.add(scaled, m.input_zero_point, out=scaled)
        np.round(scaled, out=scaled)
        np.copyto(self._quantized, scaled, casting="unsafe")
        copy_in, run, copy_out = self._calls
        tensor_in, interpreter, tensor_out = self._tensors
        copy_in(tensor_in, self._in_ptr, self._quantized.nbytes)
        run(interpreter)
        copy_out(tensor_out, self._out_ptr, self._output.nbytes)
        return self._probability[int(self._output[0])]

    def reset(self) -> None:
        self._model.reset()
        self._bind()


def _interpreter_class(runtime: str) -> tuple[str, Any] | None:
    if runtime in ("auto", "litert"):
        try:
            from ai_edge_litert.interpreter import Interpreter

            return "litert", Interpreter
        except ImportError:
            if runtime == "litert":
                raise WakeWordError("runtime = 'litert' needs the ai-edge-litert package") from None
    if runtime in ("auto", "tflite_runtime"):
        try:
            from tflite_runtime.interpreter import Interpreter

            return "tflite_runtime", Interpreter
        except ImportError:
            if runtime == "tflite_runtime":
                raise WakeWordError("runtime = 'tflite_runtime' needs the tflite-runtime package") from None
    return None


def make_runner(spec: WakeWordSpec, runtime: str = "auto") -> tuple[str, _Runner]:
    if runtime == "auto":
        # The reference first: pymicro-wakeword's own TFLite build is what the models' cutoffs were set with.
        # LiteRT's probabilities differ from it by up to 0.07 on the same input (bench listening_accuracy,
        # "wake word runtimes"), enough to flip a detection at the cutoff. Called directly (_PymicroRunner) the
        # reference costs about what LiteRT does: 0.0017-0.0019 core a model against 0.0015, offline (0.0036-0.0048
        # through its per-frame wrapper).
        try:
            return "pymicro", _PymicroRunner(spec)
        except (ImportError, WakeWordError, OSError) as exc:
            log.info("wake word: pymicro-wakeword's interpreter unavailable (%s), trying LiteRT", exc)
    if runtime != "pymicro":
        found = _interpreter_class(runtime)
        if found is not None:
            name, cls = found
            try:
                return name, _InterpreterRunner(cls, spec.model_path)
            except (ValueError, RuntimeError) as exc:
                raise WakeWordError(f"cannot load wake word model {spec.model_path}: {exc}") from None
    try:
        return "pymicro", _PymicroRunner(spec)
    except ImportError:
        raise WakeWordError(
            "no TFLite interpreter: install ai-edge-litert, tflite-runtime or pymicro-wakeword"
        ) from None


# --- the detector -------------------------------------------------------------------------------------------


class _Model:
    def __init__(self, spec: WakeWordSpec, runner: _Runner) -> None:
        self.spec = spec
        self.runner = runner
        self._batch = np.zeros((runner.stride, FEATURES), dtype=np.float32)  # the frames of the next run
        self._filled = 0
        self.probabilities: deque[float] = deque(maxlen=spec.sliding_window)
        self.best = 0.0  # highest windowed probability seen (benchmarks, tuning)

    def feed(self, features: np.ndarray) -> float | None:
        """The windowed probability after this frame, or None when the model did not run."""
        self._batch[self._filled] = features
        self._filled += 1
        if self._filled < len(self._batch):
            return None
        self._filled = 0
        self.probabilities.append(self.runner.invoke(self._batch))  # runners copy what they need at once
        if len(self.probabilities) < self.probabilities.maxlen:  # type: ignore[operator]
            return None
        mean = sum(self.probabilities) / len(self.probabilities)
        self.best = max(self.best, mean)
        return mean

    def clear(self) -> None:
        self._filled = 0
        self.probabilities.clear()


class MicroWakeWordDetector:
    """Several microWakeWord models at once on one shared frontend."""

    name = "micro"

    def __init__(self, specs: list[WakeWordSpec], runtime: str = "auto", refractory: float = 2.0) -> None:
        try:
            from pymicro_features import MicroFrontend
        except ImportError:
            raise WakeWordError("the micro wake word engine needs the pymicro-features package") from None
        if not specs:
            raise WakeWordError("no wake word models given")
        self._frontend_cls = MicroFrontend
        self._frontend = MicroFrontend()
        self.models = []
        for spec in specs:
            self.runtime, runner = make_runner(spec, runtime)
            self.models.append(_Model(spec, runner))
        self.refractory = refractory
        self._rest = b""
        self._samples = 0
        self._quiet_until = 0.0
        log.info(
            "wake words: %s (%s)",
            ", ".join(f"{m.spec.phrase} >{m.spec.probability_cutoff:g}" for m in self.models),
            self.runtime,
        )

    @classmethod
    def from_config(
        cls, entries: list[WakeWordModel], runtime: str = "auto", refractory: float = 2.0
    ) -> MicroWakeWordDetector:
        return cls([resolve_model(e) for e in entries], runtime, refractory)

    @property
    def now(self) -> float:
        return self._samples / CAPTURE_RATE

    def process(self, block: np.ndarray) -> WakeDetection | None:
        data = self._rest + block.astype("<i2", copy=False).tobytes()
        step = FEATURE_STEP * 2
        offset = 0
        found: WakeDetection | None = None
        while offset + step <= len(data):
            result = self._frontend.process_samples(data[offset : offset + step])
            read = result.samples_read * 2
            offset += read
            self._samples += result.samples_read
            if not result.features:
                if read == 0:
                    break
                continue
            features = np.asarray(result.features, dtype=np.float32)
            for model in self.models:
                prob = model.feed(features)
                if prob is None or prob <= model.spec.probability_cutoff or found is not None:
                    continue
                if self.now < self._quiet_until:
                    continue
                found = WakeDetection(model.spec.id, model.spec.phrase, prob, self.now)
        self._rest = data[offset:]
        if found is not None:
            self._quiet_until = self.now + self.refractory
            for model in self.models:
                model.clear()
        return found

    def refuse(self) -> None:
        """The last detection was refused (the robot's own voice): a short pause instead of the refractory
        time, so the user saying the wake word right after the robot still counts."""
        self._quiet_until = self.now + 0.5

    def reset(self) -> None:
        """Forget all streaming state (after the mic was closed: the old context is stale)."""
        self._frontend = self._frontend_cls()
        self._rest = b""
        for model in self.models:
            model.clear()
            model.runner.reset()
