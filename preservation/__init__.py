"""Preservation: what makes a capture provable and keeps it so.

    services      the node's integrity services (PKI and signer, TSA, custody ledger, object store, spool)
    preserve      hash -> sign -> timestamp -> store -> custody, resumable after a crash
    export        the self-verifying evidence package (zip)
    verify        offline verification of a package: no recording, database, S3 or web code is loaded
    online        verification of a stored capture: its files, every object re-read by version, the ledger
    registry      where each capture's directory is
    maintenance   what every start finishes: unfinished preservation, pending tokens, spooled uploads

Independent of recording (capture/): a capture job is handed a `Stamp` callable, and whoever composes the
two (the CLI, a worker) hands preservation the finished directory.
"""
