"""The streaming side: the Faust app and everything a running worker needs."""
