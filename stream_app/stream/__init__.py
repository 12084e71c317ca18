"""The streaming side: the Faust app, the Faust-free pipeline, error policy, metrics, web pages and worker process."""
