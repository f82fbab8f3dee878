"""The feedback loop: the request/feedback store, drift statistics, the retrain decision and
dataset snapshots of new feedback."""
