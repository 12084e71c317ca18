"""Bundled sample data (catalogue and scripted demo behaviour) read through stream_app.sample_data."""
