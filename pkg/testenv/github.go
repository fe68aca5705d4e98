package testenv

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// PullRequestPayload returns a GitHub pull_request event body, PR #7 of
// repo "org/name" from branch feature/x (at head) into main.
func PullRequestPayload(repo, action, head string) []byte {
	b, _ := json.Marshal(map[string]any{
		"action": action, "number": 7,
		"pull_request": map[string]any{
			"number": 7, "state": "open",
			"head": map[string]any{"sha": head, "ref": "feature/x"},
			"base": map[string]any{"sha": strings.Repeat("b2", 20), "ref": "main"},
		},
		"repository": map[string]any{"full_name": repo},
		"sender":     map[string]any{"login": "octocat"},
	})
	return b
}

// PushPayload returns a GitHub push event body shaped like GitHub's, for
// repo "org/name", ref and commit.
func PushPayload(repo, ref, after string) []byte {
	org, name, _ := strings.Cut(repo, "/")
	p := map[string]any{
		"ref": ref, "before": strings.Repeat("0", 40), "after": after,
		"created": false, "deleted": false, "forced": false,
		"compare": "https://github.com/" + repo + "/compare/0000000...", "base_ref": nil,
		"repository": map[string]any{
			"id": 123456, "node_id": "R_kgDOtest", "name": name, "full_name": repo, "private": false,
			"owner":    map[string]any{"name": org, "login": org, "id": 42, "type": "Organization"},
			"html_url": "https://github.com/" + repo, "clone_url": "https://github.com/" + repo + ".git",
			"ssh_url": "git@github.com:" + repo + ".git", "default_branch": "main", "master_branch": "main",
			"created_at": 1700000000, "pushed_at": 1700000100,
		},
		"pusher": map[string]any{"name": "octocat", "email": "octocat@example.invalid"},
		"sender": map[string]any{"login": "octocat", "id": 1, "type": "User"},
		"head_commit": map[string]any{
			"id": after, "tree_id": strings.Repeat("1", 40), "distinct": true, "message": "Deploy me",
			"timestamp": "2026-11-23T06:00:00Z", "url": "https://github.com/" + repo + "/commit/" + after,
			"author":    map[string]any{"name": "octocat", "email": "octocat@example.invalid", "username": "octocat"},
			"committer": map[string]any{"name": "octocat", "email": "octocat@example.invalid", "username": "octocat"},
			"added":     []string{}, "removed": []string{}, "modified": []string{"deploy.sh"},
		},
	}
	b, _ := json.Marshal(p)
	return b
}

// SignGitHub returns the X-Hub-Signature-256 value GitHub sends for body.
func SignGitHub(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

var deliverySeq atomic.Int64

// DeliveryID returns a fresh GUID-shaped X-GitHub-Delivery value.
func DeliveryID() string {
	return fmt.Sprintf("72d3162e-cc78-11e3-81ab-%012d", deliverySeq.Add(1))
}

// GitHubRequest builds a webhook request as GitHub sends it: JSON body,
// event and delivery headers, and the signature when secret is not empty.
func GitHubRequest(t testing.TB, url, event, delivery, secret string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "GitHub-Hookshot/044aadd")
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-GitHub-Delivery", delivery)
	req.Header.Set("X-GitHub-Hook-ID", "292430182")
	if secret != "" {
		req.Header.Set("X-Hub-Signature-256", SignGitHub(secret, body))
	}
	return req
}

// ErrorCode checks that body is the API's error shape
// {"error": {"code", "message"}} with both set, and returns the code.
func ErrorCode(t testing.TB, body []byte) string {
	t.Helper()
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("not an API error body (%v): %s", err, body)
	}
	return e.Error.Code
}
