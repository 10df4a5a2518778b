"""The workers that record for the custody service: take capture jobs from the queue within a tile budget, run
them on the capture engine, preserve what they recorded, and report progress, previews and heartbeats."""
