"""Recording: browser tiles on a virtual display, the multi-screen compositor, audio, page artifacts."""
