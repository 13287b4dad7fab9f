"""Scoring: the organizers' forgetting-quality metric, a submission's final score, `unlearn metric`.

Pure functions of confidences and accuracies; imports nothing from compete/ or results/.
"""
