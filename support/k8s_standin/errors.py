"""API errors as the Kubernetes API server returns them: an HTTP code and a `Status` body.

Why: clients decide on `reason` and `code` (kube-rs `Error::Api`, kubectl's messages,
client-go `IsConflict`), so every refusal is a real `Status` object
(https://kubernetes.io/docs/reference/using-api/api-concepts/#status-and-error-responses
and the `Status` kind in https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/).
"""


class ApiError(Exception):
    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self):
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def not_found(resource, name, group=""):
    d = {"name": name, "kind": resource}
    if group:
        d["group"] = group
    return ApiError(404, "NotFound", f'{resource_ref(resource, group)} "{name}" not found', d)


def already_exists(resource, name, group=""):
    d = {"name": name, "kind": resource}
    if group:
        d["group"] = group
    return ApiError(409, "AlreadyExists", f'{resource_ref(resource, group)} "{name}" already exists', d)


def conflict(resource, name, why, group=""):
    d = {"name": name, "kind": resource}
    if group:
        d["group"] = group
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource_ref(resource, group)} "{name}": {why}', d)


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(kind, name, causes, group=""):
    """causes: [(field, reason, text)], e.g. ("spec.accessModes", "FieldValueRequired", "Required value")."""
    parts = [f"{field}: {text}" for field, _, text in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    d = {"name": name, "kind": kind,
         "causes": [{"reason": r, "message": t, "field": f} for f, r, t in causes]}
    if group:
        d["group"] = group
    return ApiError(422, "Invalid", f'{kind}{"." + group if group else ""} "{name}" is invalid: {joined}', d)


def bad_request(message):
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message):
    return ApiError(405, "MethodNotAllowed", message)


def forbidden(resource, name, why, group=""):
    d = {"name": name, "kind": resource}
    return ApiError(403, "Forbidden", f'{resource_ref(resource, group)} "{name}" is forbidden: {why}', d)


def resource_ref(resource, group=""):
    return f"{resource}.{group}" if group else resource
