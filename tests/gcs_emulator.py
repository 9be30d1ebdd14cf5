"""Runs gcp-storage-emulator (in memory, loopback) for the tests, with two things of real GCS
it lacks added, so that vdm_jax meets the behaviour it meets on GCS:

* `x-goog-generation` on media downloads: tensorstore (orbax's array store) reads an
  object's generation from it; without it reading an OCDBT manifest fails with "Malformed
  StorageGeneration" (measured: the first save of the digits state failed).
* generation preconditions (`ifGenerationMatch`) on uploads and deletes, which the emulator
  ignores: a mismatch answers 412 Precondition Failed, as GCS does, so the lease lock's
  create-if-absent and compare-and-swap are tested against the HTTP API itself.

  python tests/gcs_emulator.py PORT BUCKET   # serves http://127.0.0.1:PORT until killed
"""

import sys
import time
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download, _insert, _delete = objects.download, objects.insert, objects.delete


def _generation(storage, request) -> str:
  """The live generation of the request's object, "0" when there is none (GCS's meaning)."""
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:
    return "0"
  return str(obj.get("generation") or "0")


def _precondition_failed(request, response, storage, object_id=None) -> bool:
  wanted = request.query.get("ifGenerationMatch")
  if not wanted:
    return False
  if object_id is not None:
    request.params["object_id"] = object_id
  if _generation(storage, request) == wanted[0]:
    return False
  response.status = HTTPStatus.PRECONDITION_FAILED
  response.json({"error": {"code": 412, "message": "conditionNotMet"}})
  return True


def download(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  if response.status == HTTPStatus.OK or response.status == HTTPStatus.PARTIAL_CONTENT:
    response["x-goog-generation"] = _generation(storage, request)


def insert(request, response, storage, *args, **kwargs):
  # The object's name: a query parameter (media uploads) or the multipart metadata.
  name = request.query.get("name", [None])[0]
  data = request.data if isinstance(request.data, dict) else {}
  if name is None:  # multipart: {"meta": {...}, ...}; starting a resumable upload: {...}
    name = data.get("meta", data).get("name")
  if name is not None and _precondition_failed(request, response, storage, name):
    return None
  return _insert(request, response, storage, *args, **kwargs)


def delete(request, response, storage, *args, **kwargs):
  if _precondition_failed(request, response, storage):
    return None
  return _delete(request, response, storage, *args, **kwargs)


objects.download, objects.insert, objects.delete = download, insert, delete

from gcp_storage_emulator.server import create_server  # noqa: E402 (after the patches)

if __name__ == "__main__":
  port, bucket = int(sys.argv[1]), sys.argv[2]
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.start()
  print(f"serving http://127.0.0.1:{port}", flush=True)
  while True:
    time.sleep(3600)
