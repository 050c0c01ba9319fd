"""How a job's row goes back to pending, as SET clauses both backends' statements use (the
same SQL in both dialects): one meaning of "afresh", "forget the upload" and "retry", kept in
one place so that the two backends cannot drift apart."""

# A row going back to pending starts its attempts afresh (the attempts table keeps the past);
# when its earlier upload no longer counts (the file changed, the entry failed remotely), the
# upload is forgotten too (FORGET_UPLOAD drops the doubt with it: see the rule for doubt in
# attempt.py). A doubt about an earlier register (unknown_since) is kept otherwise.
AFRESH = """state = 'pending', attempts = 0, next_attempt_at = 0, last_error = NULL,
       error_kind = NULL, started_at = NULL, finished_at = NULL, duration = NULL"""
BACK_TO_PENDING = f"{AFRESH}, step = NULL, s3_key = NULL"
FORGET_UPLOAD = (
    "file_id = NULL, filename = NULL, remote_status = NULL, unknown_since = NULL,"
    " content_hash = NULL"
)
# retry-failed: as BACK_TO_PENDING, except for rows whose upload must not be made again: a
# doubtful one keeps the S3 key that settles its doubt, and a failed update-metadata stays
# one (its entry exists: uploading the file again would make a second).
RETRY_TO_PENDING = f"""{AFRESH},
       step = CASE WHEN unknown_since IS NOT NULL OR step = 'metadata' THEN step END,
       s3_key = CASE WHEN unknown_since IS NOT NULL OR step = 'metadata' THEN s3_key END"""

# A changed file's row forgets its upload, except the doubt of a register that may have
# landed: the S3 key that settles it stays (with step NULL: the key of an older content), so
# that the entry it made, if any, is found and superseded instead of staying forever.
FORGET_CHANGED = f"""{AFRESH}, step = NULL,
       s3_key = CASE WHEN unknown_since IS NOT NULL AND file_id IS NULL THEN s3_key END,
       unknown_since = CASE WHEN file_id IS NULL THEN unknown_since END,
       file_id = NULL, filename = NULL, remote_status = NULL, content_hash = NULL"""
