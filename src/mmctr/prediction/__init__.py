"""Scoring a test file with a trained checkpoint and writing the submission."""

from mmctr.prediction.submission import SUBMISSION_COLUMNS, predict_submission, write_submission

__all__ = ["SUBMISSION_COLUMNS", "predict_submission", "write_submission"]
