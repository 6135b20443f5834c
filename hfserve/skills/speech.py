"""The ``speech-to-text`` skill: Whisper-family (sequence-to-sequence) and CTC (wav2vec2) models.

The folder's processor (feature extractor + tokenizer) is loaded with ``AutoProcessor``; the
model with ``AutoModelForCTC`` when its architecture is a ``*ForCTC`` head, else with
``AutoModelForSpeechSeq2Seq``.
"""

from __future__ import annotations

from hfserve.skills.base import LoadedModel, RuntimeOptions
from hfserve.skills.catalog import SPEECH_TO_TEXT_INFO
from hfserve.skills.embeddings import local_folder
from hfserve.skills.registry import read_model_facts

__all__ = ["SpeechToTextSkill"]


class SpeechToTextSkill:
    """Loads speech recognition models as ``TranscriptionModel`` s."""

    info = SPEECH_TO_TEXT_INFO

    def load(
        self, model_path: str, device: str, dtype: str, options: RuntimeOptions
    ) -> LoadedModel:
        """Load processor and model onto ``device`` in ``dtype`` (blocking)."""
        from transformers import AutoModelForCTC, AutoModelForSpeechSeq2Seq, AutoProcessor

        from hfserve.skills._speech import CTCSpeechModel, Seq2SeqSpeechModel, SpeechModel
        from hfserve.skills._torch import torch_dtype

        source = str(local_folder(model_path))
        trust = options.trust_remote_code
        ctc = any(arch.endswith("ForCTC") for arch in read_model_facts(source).architectures)
        auto = AutoModelForCTC if ctc else AutoModelForSpeechSeq2Seq
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust)  # type: ignore[no-untyped-call]
        model = auto.from_pretrained(source, dtype=torch_dtype(dtype), trust_remote_code=trust)
        model.to(device)
        model.eval()
        kind: type[SpeechModel] = CTCSpeechModel if ctc else Seq2SeqSpeechModel
        return kind(
            info=self.info,
            model_id=model_path,
            device=device,
            dtype=dtype,
            model=model,
            processor=processor,
            options=options,
        )
