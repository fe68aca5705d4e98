// Package ghevent reads the few fields otariinae routes on out of a GitHub
// push or pull_request payload, in one pass and without decoding the rest.
// Ingest routes on them; the engine creates flows from them.
package ghevent

import (
	"bytes"
	"encoding/json"
	"errors"
)

// ErrMalformed is any payload that is not one valid JSON object.
var ErrMalformed = errors.New("not valid JSON")

// Fields is the little of a push or pull_request payload that otariinae
// routes on. The JSON tags are the payload's names: Scan fills Fields as
// json.Unmarshal would.
type Fields struct {
	Ref         string       `json:"ref"`
	After       string       `json:"after"`
	Deleted     bool         `json:"deleted"`
	Action      string       `json:"action"`
	PullRequest *PullRequest `json:"pull_request"`
	Repository  *Repository  `json:"repository"`
}

// PullRequest is the routed part of a payload's pull_request.
type PullRequest struct {
	Head struct {
		SHA string `json:"sha"`
		Ref string `json:"ref"`
	} `json:"head"`
}

// Repository is the routed part of a payload's repository.
type Repository struct {
	FullName string `json:"full_name"`
}

// maxJSONDepth matches encoding/json's nesting limit.
const maxJSONDepth = 10000

// Scan validates payload as JSON in one pass and picks out Fields. It
// accepts exactly what json.Valid accepts (when the top level is an
// object; FuzzScan checks it against encoding/json), and fills Fields as
// json.Unmarshal would, but without encoding/json's second pass and
// per-byte indirect calls: on an 8 KB push this was half of ingest's CPU
// time, and a full go-github decode was a tenth of the engine's
// (docs/performance.md).
func Scan(payload []byte) (Fields, error) {
	var f Fields
	var sha, headRef, fullName string
	var pr, repo bool
	p := jsonScanner{b: payload}
	top := func(key []byte) target {
		switch {
		case keyIs(key, "ref"):
			return target{str: &f.Ref}
		case keyIs(key, "after"):
			return target{str: &f.After}
		case keyIs(key, "deleted"):
			return target{boolean: &f.Deleted}
		case keyIs(key, "action"):
			return target{str: &f.Action}
		case keyIs(key, "repository"):
			return target{present: &repo, obj: func(key []byte) target {
				if keyIs(key, "full_name") {
					return target{str: &fullName}
				}
				return target{}
			}}
		case keyIs(key, "pull_request"):
			return target{present: &pr, obj: func(key []byte) target {
				if keyIs(key, "head") {
					return target{obj: func(key []byte) target {
						switch {
						case keyIs(key, "sha"):
							return target{str: &sha}
						case keyIs(key, "ref"):
							return target{str: &headRef}
						}
						return target{}
					}}
				}
				return target{}
			}}
		}
		return target{}
	}
	p.ws()
	if p.i >= len(p.b) || p.b[p.i] != '{' {
		return f, ErrMalformed
	}
	if err := p.value(target{obj: top}, 0); err != nil {
		return f, err
	}
	p.ws()
	if p.i != len(p.b) {
		return f, ErrMalformed
	}
	if pr {
		f.PullRequest = &PullRequest{}
		f.PullRequest.Head.SHA, f.PullRequest.Head.Ref = sha, headRef
	}
	if repo {
		f.Repository = &Repository{FullName: fullName}
	}
	return f, nil
}

// keyIs compares an object key the way encoding/json matches struct
// fields: exactly or ASCII case-insensitively.
func keyIs(key []byte, name string) bool {
	return len(key) == len(name) && (string(key) == name || bytes.EqualFold(key, []byte(name)))
}

// target says where a value goes: a string, a bool, an object whose keys
// map to targets, or nowhere (validated and skipped). present is set when
// the value is a non-null object.
type target struct {
	str     *string
	boolean *bool
	obj     func(key []byte) target
	present *bool
}

type jsonScanner struct {
	b []byte
	i int
}

func (p *jsonScanner) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// value parses one value at p.i into t.
func (p *jsonScanner) value(t target, depth int) error {
	p.ws()
	if p.i >= len(p.b) {
		return ErrMalformed
	}
	switch c := p.b[p.i]; {
	case c == '{':
		if depth >= maxJSONDepth {
			return ErrMalformed
		}
		if t.str != nil || t.boolean != nil {
			return ErrMalformed // an object where a string or bool belongs
		}
		if t.present != nil {
			*t.present = true
		}
		return p.object(t.obj, depth+1)
	case c == '[':
		if depth >= maxJSONDepth || t.str != nil || t.boolean != nil || t.obj != nil {
			return ErrMalformed
		}
		return p.array(depth + 1)
	case c == '"':
		if t.boolean != nil || t.obj != nil {
			return ErrMalformed
		}
		start := p.i
		escaped, err := p.string()
		if err != nil {
			return err
		}
		if t.str != nil {
			raw := p.b[start+1 : p.i-1]
			if !escaped {
				*t.str = string(raw)
			} else if err := json.Unmarshal(p.b[start:p.i], t.str); err != nil {
				return ErrMalformed
			}
		}
		return nil
	case c == 't':
		return p.literal("true", t, true)
	case c == 'f':
		return p.literal("false", t, false)
	case c == 'n':
		if !bytes.HasPrefix(p.b[p.i:], []byte("null")) {
			return ErrMalformed
		}
		p.i += 4 // null leaves the target as it was, as in encoding/json
		return nil
	case c == '-' || (c >= '0' && c <= '9'):
		if t.str != nil || t.boolean != nil || t.obj != nil {
			return ErrMalformed
		}
		return p.number()
	}
	return ErrMalformed
}

func (p *jsonScanner) literal(word string, t target, v bool) error {
	if !bytes.HasPrefix(p.b[p.i:], []byte(word)) {
		return ErrMalformed
	}
	if t.str != nil || t.obj != nil {
		return ErrMalformed
	}
	if t.boolean != nil {
		*t.boolean = v
	}
	p.i += len(word)
	return nil
}

func (p *jsonScanner) object(keys func([]byte) target, depth int) error {
	p.i++ // {
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		return nil
	}
	for {
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return ErrMalformed
		}
		start := p.i
		escaped, err := p.string()
		if err != nil {
			return err
		}
		key := p.b[start+1 : p.i-1]
		if escaped {
			var s string
			if json.Unmarshal(p.b[start:p.i], &s) != nil {
				return ErrMalformed
			}
			key = []byte(s)
		}
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return ErrMalformed
		}
		p.i++
		var t target
		if keys != nil {
			t = keys(key)
		}
		if err := p.value(t, depth); err != nil {
			return err
		}
		if done, err := p.next('}'); done || err != nil {
			return err
		}
	}
}

func (p *jsonScanner) array(depth int) error {
	p.i++ // [
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == ']' {
		p.i++
		return nil
	}
	for {
		if err := p.value(target{}, depth); err != nil {
			return err
		}
		if done, err := p.next(']'); done || err != nil {
			return err
		}
	}
}

// string moves past one string and reports whether it had escapes.
func (p *jsonScanner) string() (bool, error) {
	p.i++ // opening quote
	escaped := false
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			return escaped, nil
		case c == '\\':
			escaped = true
			if p.i+1 >= len(p.b) {
				return false, ErrMalformed
			}
			switch p.b[p.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				p.i += 2
			case 'u':
				if p.i+6 > len(p.b) {
					return false, ErrMalformed
				}
				for _, h := range p.b[p.i+2 : p.i+6] {
					if !isHex(h) {
						return false, ErrMalformed
					}
				}
				p.i += 6
			default:
				return false, ErrMalformed
			}
		case c < 0x20:
			return false, ErrMalformed
		default:
			p.i++
		}
	}
	return false, ErrMalformed
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func (p *jsonScanner) digits() int {
	n := 0
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		p.i++
		n++
	}
	return n
}

// number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *jsonScanner) number() error {
	if p.b[p.i] == '-' {
		p.i++
	}
	if p.i >= len(p.b) {
		return ErrMalformed
	}
	if p.b[p.i] == '0' {
		p.i++
	} else if p.digits() == 0 {
		return ErrMalformed
	}
	if p.i < len(p.b) && p.b[p.i] == '.' {
		p.i++
		if p.digits() == 0 {
			return ErrMalformed
		}
	}
	if p.i < len(p.b) && (p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		p.i++
		if p.i < len(p.b) && (p.b[p.i] == '+' || p.b[p.i] == '-') {
			p.i++
		}
		if p.digits() == 0 {
			return ErrMalformed
		}
	}
	return nil
}

// next reads the separator after a member of an object or array: true
// when it was the closing byte, an error when it is neither that nor ','.
func (p *jsonScanner) next(closing byte) (bool, error) {
	p.ws()
	if p.i >= len(p.b) {
		return false, ErrMalformed
	}
	switch p.b[p.i] {
	case ',':
		p.i++
		return false, nil
	case closing:
		p.i++
		return true, nil
	}
	return false, ErrMalformed
}
