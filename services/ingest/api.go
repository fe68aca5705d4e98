package ingest

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/shanenoi/otariinae/pkg/api"
)

// OpenAPI is the OpenAPI 3.1 document of every route ingest serves,
// served at GET /api/v1/openapi.json. A test checks every response of the
// package's tests against it.
//
//go:embed openapi.json
var OpenAPI []byte

// maxAPIBody caps the JSON body of an /api/v1 call.
const maxAPIBody = 64 << 10

// mountAPI adds the routes under /api/v1/. Reads need scope read (open
// while no token is configured), triggers write, config and audit admin;
// every write is audited.
func (in *Ingest) mountAPI(r chi.Router) {
	r.Route("/api/v1", func(r chi.Router) {
		r.NotFound(api.NotFound)
		r.MethodNotAllowed(api.MethodNotAllowed)
		r.Use(withRequestID)
		r.Get("/openapi.json", serveOpenAPI)

		read := in.require(ScopeRead)
		r.With(read).Get("/flows", in.listFlows)
		r.With(read).Get("/flows/{id}", in.getFlow)
		r.With(read).Get("/artifacts/{artifact}/versions", in.artifactVersions)
		r.With(read).Get("/agents", in.listAgents)
		r.With(read).Get("/services", in.listServices)
		r.With(read).Get("/services/{name}/plan", in.plan)

		write := func(action string) chi.Middlewares {
			return chi.Chain(in.require(ScopeWrite), in.audited(action))
		}
		r.With(write("artifact.create")...).Post("/artifacts", in.createArtifact)
		r.With(write("promotion.result")...).Post("/deployments/{id}/promotions/{name}", in.promotionResult)
		r.With(write("promotion.approve")...).Post("/deployments/{id}/promotions/{name}/approve", in.approve)
		r.With(write("promotion.reject")...).Post("/deployments/{id}/promotions/{name}/reject", in.rejectPromotion)
		r.With(write("flow.cancel")...).Post("/flows/{id}/cancel", in.cancelFlow)
		r.With(write("flow.redeploy")...).Post("/flows/{id}/redeploy", in.redeployFlow)

		r.With(in.require(ScopeAdmin), in.audited("config.reload")).Post("/config/reload", in.reloadConfig)
		r.With(in.require(ScopeAdmin)).Get("/audit", in.listAudit)
		r.With(in.require(ScopeAdmin), in.audited("webhook.secret.read")).Get("/webhooks/{name}/secret", in.webhookSecret)
	})
}

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(OpenAPI)
}

// queryLimit reads ?limit= (1 to maxLimit, default defaultLimit).
func queryLimit(w http.ResponseWriter, r *http.Request) (int, bool) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return defaultLimit, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxLimit {
		api.Error(w, api.CodeBadRequest, fmt.Sprintf("limit must be an integer from 1 to %d", maxLimit))
		return 0, false
	}
	return n, true
}

// cursorPtr is a next_cursor: null on the last page.
func cursorPtr(c string) *string {
	if c == "" {
		return nil
	}
	return &c
}

// decodeJSON reads the request's JSON body into v, answering the error
// itself. Unknown fields are rejected, so a typo is a 400 rather than a
// silently ignored field. optional allows an empty body.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			api.Error(w, api.CodeUnsupportedMedia, "Content-Type must be application/json")
			return false
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAPIBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			api.Error(w, api.CodePayloadTooLarge, fmt.Sprintf("the body exceeds %d bytes", maxAPIBody))
			return false
		}
		api.Error(w, api.CodeBadRequest, "could not read the body")
		return false
	}
	if len(body) == 0 {
		if optional {
			return true
		}
		api.Error(w, api.CodeBadRequest, "a JSON body is required")
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		api.Error(w, api.CodeBadRequest, "malformed JSON body: "+jsonProblem(err))
		return false
	}
	if dec.More() {
		api.Error(w, api.CodeBadRequest, "malformed JSON body: more than one JSON value")
		return false
	}
	return true
}

// jsonProblem describes a decode error without echoing the body.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("syntax error at byte %d", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return fmt.Sprintf("field %s must be a %s", typ.Field, typ.Type)
		}
		return "the body must be a JSON object"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of the body"
	}
	return err.Error() // e.g. json: unknown field "x"
}

// WebhookSecret is the body of GET /api/v1/webhooks/{name}/secret.
type WebhookSecret struct {
	Webhook   string `json:"webhook"`
	Secret    string `json:"secret"`
	Generated bool   `json:"generated"`
}

// webhookSecret tells an admin the secret a webhook's receiver verifies
// with: the config's, or the one generated and stored in Redis when the
// config has none (every dispatcher replica signs with that one).
func (in *Ingest) webhookSecret(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	wh := in.conf.Get().Webhook(name)
	if wh == nil {
		api.Error(w, api.CodeNotFound, "no webhook named "+name)
		return
	}
	out := WebhookSecret{Webhook: name, Secret: wh.Secret}
	if out.Secret == "" {
		s, err := in.st.WebhookSecret(r.Context(), name)
		if err != nil {
			in.unavailable(w, "read webhook secret", err)
			return
		}
		out.Secret, out.Generated = s, true
	}
	w.Header().Set("Cache-Control", "no-store")
	api.JSON(w, http.StatusOK, out)
}
