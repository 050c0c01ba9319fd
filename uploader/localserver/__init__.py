"""A local MaiAgent-compatible server: the tests, `make demo` and `make bench` run against it.

It speaks the subset of the MaiAgent API the uploader uses (presign, S3 POST, register,
list/get/delete/reparse knowledge-base files, a file's latest failed reason, the supported file
types, knowledge bases, labels, update-metadata) and adds
fault knobs, so the uploader can be exercised against the things that go wrong at scale: lost
answers, throttling, dropped connections, slow or failed parsing, late commits, garbage answers,
outages. Everything lives in memory; uploaded files are only hashed unless they are small, so a
benchmark can push gigabytes through it.

Run in-process with `MaiAgentServer().run_in_thread()`, or as a process with
`python -m uploader.localserver --port 0` (prints `listening on <base url>`). docs/localserver.md
says how to use it; the modules: app (routes, the request gate, lifecycle), state (what is held),
dialects, listing, api (the other knowledge-base calls), s3 (the object store), faults (the
knobs), control (what tests see and steer), wire (reading requests, writing answers).

Dialects (`dialect=` / `--dialect`): the two sources of what MaiAgent answers disagree, so the
server speaks either. `docs` (the default) answers as MaiAgent's public documentation shows:

    register  201 {"count": n, "next": null, "previous": null, "results": [entry, ...]}
    entry     {"id", "filename", "file": "http://127.0.0.1:PORT/<key, percent-encoded as
              Django's filepath_to_uri does>", "fileType": "txt", "knowledgeBase": kb,
              "size": 5, "status": {"code": "done", "message": "..."},
              "createdAt": "1728104372000", "labels": [{"id", "name"}],
              "rawUserDefineMetadata": {...}, "parser": uuid | null}
    keys      media/chatbots/chatbot-file/<uuid>.<ext>   (no filename in the key)
    listing   page size 20 by default, 100 at most, whatever is asked (`page_size`; `pageSize`
              is ignored); a key registered twice in one knowledge base is refused with
              400 {"detail": "Duplicate File Upload"}

`examples` keeps the shapes of MaiAgent's example code (what this server always spoke):

    register  201 [entry, ...]
    entry     {"id", "filename", "file": "<key>", "size": 5, "status": "done",
              "createdAt": 1728104372000, "labels": [{"id", "name"}], "rawUserDefineMetadata"}
    keys      media/chatbot-file/<uuid>/<filename>
    listing   page size 10 by default, 1000 at most; duplicate keys are registered again
    calls     no `parsers/supported-file-types/` and no `latest-failed-reason/` (404), as an
              older or on-premise deployment; batch-reparse is served

The size field is `size` in both (one of MaiAgent's examples reads `file_size`: knob
`size_field`). Every shape can also be overridden alone by a knob ("" = the dialect's choice).

Knobs (fields of `Faults`; each is a keyword of `maiagent_factory`, a `--flag-name` on the
command line, and settable while running via `server.faults.x = ...` or POST /_control/faults):
  latency: seconds every API/S3 request waits before it is served
  error_rate: share of requests answered 503 (S3: XML SlowDown)
  drop_rate: share of requests whose connection is closed before anything happens
  lost_register_rate: share of register calls that take effect but whose answer is lost
  rps_limit: API requests per second (sliding window, 429 with Retry-After: 1); 0 = unlimited
  parse_delay: seconds an entry spends initial (first half) then processing
  parse_failure_rate: share of entries whose parsing ends failed
  list_size: False leaves the size field out of every entry
  delete_conflict_while_processing: DELETE of an initial/processing entry answers 409
  delete_500_rate: share of DELETEs that delete and then answer 500
  delete_conflict_first: the first N DELETEs of each entry answer 409 (nothing deleted)
  delete_delay: seconds a DELETE of one entry waits before it is served (a crash mid-delete)
  policy_ttl: seconds a presigned policy stays valid
  max_file_size: the presigned policy's content-length-range maximum (S3: EntityTooLarge)
  keep_bytes: uploads up to this size keep their bytes (content checks); bigger, only a hash
  register_first_only: a register of several files creates (and answers) only the first
  register_effect_delay: seconds after the request a register takes effect (entries appear)
  register_answer_early: with a delay, answer at once (listing lags) instead of at the effect
  file_types: comma list of extensions register accepts (e.g. "txt,pdf"); "" = any; else 400
    {"detail": "Unsupported file type: ..."}
  supported_types: comma list GET parsers/supported-file-types/ answers ("" = the 12 the docs
    list: doc docx txt pdf md xls xlsx csv ppt pptx json jsonl)
  missing_calls: comma list of calls answered 404 as a service without them: supported_types,
    failed_reason, reparse ("" = the dialect's choice, "none" = every call served)
  reparse_failure_rate: share of reparsed entries whose parsing fails again (-1: as
    parse_failure_rate); a reparse with an OCR parser (OCR_PARSER) always succeeds
  stuck_rate: share of new entries that stay `processing` for ever (until reparsed)
  delete_phase: seconds a deleted entry stays listed as `deleting` before it is gone
  failure_reason: what latest-failed-reason/ answers for a failed entry ({"reason": text})
  failing_types: comma list of extensions whose register answers 500, nothing registered (a
              parser broken for one type); "" = none
  s3_bandwidth: bytes per second the S3 endpoint reads of all uploads together (a slow
              uplink); 0 = unlimited
  redirect_to: every API request answers 302 with this Location ("" = never)
  refuse_names: register refuses a filename containing this text with a field error
              400 {"files": [{}, {"filename": ["..."]}]} ("" = refuse none)
  list_order: listing order: newest (docs' promise), oldest, random (a fixed arbitrary order)
  null_id_rate: share of register answers whose entries carry "id": null
  bad_presign_url_rate: share of presign answers whose url is "http://[::1" (unparseable)
  huge_answer_bytes: pad answers of huge_answer_on endpoints with this many bytes of
    leading JSON whitespace (streamed, chunked); 0 = off
  huge_answer_on: comma list of endpoint names (see ENDPOINTS) that huge_answer_bytes pads
  filename_list_rate: share of listed/got entries whose "filename" is a list
  drop_fields: comma list of entry fields left out of every answer (e.g. "file" or "id")
  unavailable: every API and S3 request answers 503 while True (see also `outage()`)
  update_metadata_methods: comma list of methods update-metadata accepts; others get 405
  update_metadata_label_forms: accepted update-metadata label forms, "objects" ([{"id"}])
    and/or "ids" (["<id>"]); the other answers 400
  register_answer: "list" | "page" — shape of the register answer
  file_field: "key" | "url" — what an entry's "file" holds
  status_form: "string" | "object" — an entry's "status"
  created_at_form: "int" | "string" | "float" | "iso" — an entry's "createdAt"
  size_field: "size" | "file_size" | "fileSize" — the name of an entry's size
  key_form: "filename" | "uuid" — presigned keys with or without the filename
  duplicate_keys: "allow" | "refuse" — a key already in the knowledge base at register
  duplicate_error: "detail" | "files" | "non_field" — body of the duplicate 400:
    {"detail": M}, {"files": [{"file": [M]} or {}, ...]}, {"non_field_errors": [M]}
  page_size_default / page_size_max: the listing's page sizes; 0 = the dialect's
  page_size_params: comma list of query parameters read as the page size ("" = page_size)
  list_shift: after each listing answer, this many entries of someone else are added (newest
    first, the pages read next shift down: what a knowledge base others write to does)
  list_count: the listing's `count` says this instead of the truth (0 = the truth): a stale
    cache in front of the service
  seed: seeds every random choice (reseeded when changed)

Beyond knobs: `outage(seconds, mode)` ("refuse": the port is closed, connections refused;
"503": every request answers 503), `shutdown()`/`restart()` (same port, same state), request
counters per endpoint (`stats()`, `reset_stats()`, GET/DELETE /_control/stats), a knowledge base
pre-filled with entries of someone else (`fill(kb, n)`, POST /_control/fill), what is stored
(`records`, `entries_by_key`, `content`, `entry_content`, GET /media/<key>, /_control/...).
"""

from uploader.localserver.api import DEFAULT_PARSER, OCR_PARSER
from uploader.localserver.app import MaiAgentServer
from uploader.localserver.dialects import DIALECTS
from uploader.localserver.faults import FAILURE_REASON, Faults
from uploader.localserver.state import COUNTERS, ENDPOINTS

__all__ = [
    "COUNTERS",
    "DEFAULT_PARSER",
    "DIALECTS",
    "ENDPOINTS",
    "FAILURE_REASON",
    "OCR_PARSER",
    "Faults",
    "MaiAgentServer",
]
