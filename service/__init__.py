"""What the custody service's API and its workers share: the database schema and migrations, the capture job
queue, a capture's states and progress events, and the evidence file index. Imports neither `api` nor `worker`."""
