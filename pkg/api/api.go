// Package api holds the HTTP error contract shared by every route: one table
// of stable error codes and one function that writes
// {"error": {"code": "...", "message": "..."}} with the right status.
package api

import (
	"encoding/json"
	"net/http"
)

// Code is a stable, documented error code.
type Code string

// Every error code the API returns, with its HTTP status. docs/api.md lists
// the same table; change both together.
const (
	CodeBadRequest         Code = "bad_request"
	CodeInvalidSignature   Code = "invalid_signature"
	CodeUnauthorized       Code = "unauthorized"
	CodeForbidden          Code = "forbidden"
	CodeNotFound           Code = "not_found"
	CodeMethodNotAllowed   Code = "method_not_allowed"
	CodeConflict           Code = "conflict"
	CodePayloadTooLarge    Code = "payload_too_large"
	CodeUnsupportedMedia   Code = "unsupported_media_type"
	CodeUnavailable        Code = "unavailable"
	CodeInternal           Code = "internal"
	CodeRepositoryUnknown  Code = "repository_not_configured"
	CodeDeploymentNotFound Code = "deployment_not_found"
	// API (/api/v1) codes.
	CodeIdempotencyMismatch Code = "idempotency_key_reused"
	CodeInvalidConfig       Code = "invalid_config"
)

var statuses = map[Code]int{
	CodeBadRequest:         http.StatusBadRequest,
	CodeInvalidSignature:   http.StatusUnauthorized,
	CodeUnauthorized:       http.StatusUnauthorized,
	CodeForbidden:          http.StatusForbidden,
	CodeNotFound:           http.StatusNotFound,
	CodeMethodNotAllowed:   http.StatusMethodNotAllowed,
	CodeConflict:           http.StatusConflict,
	CodePayloadTooLarge:    http.StatusRequestEntityTooLarge,
	CodeUnsupportedMedia:   http.StatusUnsupportedMediaType,
	CodeUnavailable:        http.StatusServiceUnavailable,
	CodeInternal:           http.StatusInternalServerError,
	CodeRepositoryUnknown:  http.StatusNotFound,
	CodeDeploymentNotFound: http.StatusNotFound,
	// The same Idempotency-Key was sent before with a different request.
	CodeIdempotencyMismatch: http.StatusUnprocessableEntity,
	// POST /api/v1/config/reload found the file invalid; the old one stays.
	CodeInvalidConfig: http.StatusBadRequest,
}

// Status returns the HTTP status of code.
func Status(c Code) int {
	if s, ok := statuses[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// Codes returns every code with its status, for docs and tests.
func Codes() map[Code]int {
	out := make(map[Code]int, len(statuses))
	for k, v := range statuses {
		out[k] = v
	}
	return out
}

type errorBody struct {
	Error struct {
		Code    Code   `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// Error writes the error body with the status of code.
func Error(w http.ResponseWriter, c Code, message string) {
	var b errorBody
	b.Error.Code, b.Error.Message = c, message
	if c == CodeUnavailable && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", "5")
	}
	JSON(w, Status(c), b)
}

// ErrorWith writes the error body with extra fields beside code and
// message, e.g. {"error": {"code": "conflict", "message": "...", "state":
// "succeeded"}}. Extra keys never replace code or message.
func ErrorWith(w http.ResponseWriter, c Code, message string, extra map[string]any) {
	e := make(map[string]any, len(extra)+2)
	for k, v := range extra {
		e[k] = v
	}
	e["code"], e["message"] = c, message
	if c == CodeUnavailable && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", "5")
	}
	JSON(w, Status(c), map[string]any{"error": e})
}

// JSON writes v as JSON with status.
func JSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

// NotFound and MethodNotAllowed are chi fallbacks that keep the error shape.
func NotFound(w http.ResponseWriter, r *http.Request) {
	Error(w, CodeNotFound, "no route for "+r.Method+" "+r.URL.Path)
}

// MethodNotAllowed answers a known route called with the wrong method.
func MethodNotAllowed(w http.ResponseWriter, r *http.Request) {
	Error(w, CodeMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path)
}
