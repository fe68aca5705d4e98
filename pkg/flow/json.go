package flow

import (
	"errors"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends the flow's JSON to b: byte for byte what
// json.Marshal(f) writes (TestAppendJSON and FuzzAppendJSON hold it to
// that), without reflection. The engine writes the whole flow on every
// event, and encoding/json was a tenth of its CPU time
// (docs/performance.md). Only the engine's state write uses it: anything
// else may keep using encoding/json, which gives the same bytes.
//
// Like json.Marshal, it fails only for a time outside years 0 to 9999.
func (f *Flow) AppendJSON(b []byte) ([]byte, error) {
	w := jsonWriter{b: b}
	w.raw(`{"id":`)
	w.str(f.ID)
	w.raw(`,"artifact":`)
	w.str(f.Artifact)
	w.raw(`,"version":`)
	w.str(f.Version)
	w.raw(`,"commit":`)
	w.str(f.Commit)
	w.raw(`,"ref":`)
	w.str(f.Ref)
	w.raw(`,"service":`)
	w.str(f.Service)
	w.raw(`,"repository":`)
	w.str(f.Repository)
	w.raw(`,"state":`)
	w.str(string(f.State))
	w.raw(`,"created_at":`)
	w.time(f.CreatedAt)
	w.raw(`,"updated_at":`)
	w.time(f.UpdatedAt)
	w.optStr(`,"supersedes":`, f.Supersedes)
	w.optStr(`,"rollback_of":`, f.RollbackOf)
	w.optStr(`,"redeploy_of":`, f.RedeployOf)
	w.optStr(`,"reason":`, f.Reason)
	if len(f.Metadata) > 0 {
		w.raw(`,"metadata":`)
		w.strMap(f.Metadata)
	}
	w.raw(`,"deployments":`)
	if f.Deployments == nil {
		w.raw("null")
	} else {
		w.raw("[")
		for i := range f.Deployments {
			if i > 0 {
				w.raw(",")
			}
			w.deployment(&f.Deployments[i])
		}
		w.raw("]")
	}
	if f.Spec != nil {
		w.raw(`,"spec":`)
		w.spec(f.Spec)
	}
	w.raw("}")
	return w.b, w.err
}

// jsonWriter appends JSON as encoding/json writes it; err keeps the first
// error.
type jsonWriter struct {
	b   []byte
	err error
}

func (w *jsonWriter) raw(s string) { w.b = append(w.b, s...) }

func (w *jsonWriter) optStr(key, v string) {
	if v != "" {
		w.raw(key)
		w.str(v)
	}
}

func (w *jsonWriter) optBool(key string, v bool) {
	if v {
		w.raw(key)
		w.raw("true")
	}
}

func (w *jsonWriter) int(v int64) { w.b = strconv.AppendInt(w.b, v, 10) }

// time appends t as time.Time's MarshalJSON does: RFC 3339 with
// nanoseconds, refusing what RFC 3339 cannot hold (a year outside 0 to
// 9999, a zone offset of 24 hours or more).
func (w *jsonWriter) time(t time.Time) {
	b := append(w.b, '"')
	n0 := len(b)
	b = t.AppendFormat(b, time.RFC3339Nano)
	switch {
	case len(b) < n0+5 || b[n0+4] != '-':
		w.fail("Time.MarshalJSON: year outside of range [0,9999]")
	case b[len(b)-1] != 'Z':
		c := b[len(b)-len("Z07:00")]
		hh := 10*(b[len(b)-5]-'0') + (b[len(b)-4] - '0')
		if ('0' <= c && c <= '9') || hh >= 24 {
			w.fail("Time.MarshalJSON: timezone hour outside of range [0,23]")
		}
	}
	w.b = append(b, '"')
}

func (w *jsonWriter) fail(msg string) {
	if w.err == nil {
		w.err = errors.New(msg)
	}
}

func (w *jsonWriter) timePtr(t *time.Time) {
	if t == nil {
		w.raw("null")
		return
	}
	w.time(*t)
}

func (w *jsonWriter) strMap(m map[string]string) {
	if m == nil {
		w.raw("null")
		return
	}
	var small [8]string
	keys := small[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	w.raw("{")
	for i, k := range keys {
		if i > 0 {
			w.raw(",")
		}
		w.str(k)
		w.raw(":")
		w.str(m[k])
	}
	w.raw("}")
}

func (w *jsonWriter) deployment(d *Deployment) {
	w.raw(`{"id":`)
	w.str(d.ID)
	w.raw(`,"flow_id":`)
	w.str(d.FlowID)
	w.raw(`,"environment":`)
	w.str(d.Environment)
	w.raw(`,"state":`)
	w.str(string(d.State))
	w.raw(`,"created_at":`)
	w.timePtr(d.CreatedAt)
	w.raw(`,"started_at":`)
	w.timePtr(d.StartedAt)
	w.raw(`,"completed_at":`)
	w.timePtr(d.CompletedAt)
	w.raw(`,"finished_at":`)
	w.timePtr(d.FinishedAt)
	w.optStr(`,"reason":`, d.Reason)
	w.raw(`,"jobs":`)
	w.jobs(d.Jobs)
	w.raw(`,"promotions":`)
	if d.Promotions == nil {
		w.raw("null")
	} else {
		w.raw("[")
		for i := range d.Promotions {
			if i > 0 {
				w.raw(",")
			}
			w.promotion(&d.Promotions[i])
		}
		w.raw("]")
	}
	w.optBool(`,"waiting":`, d.Waiting)
	w.raw("}")
}

func (w *jsonWriter) jobs(jobs []Job) {
	if jobs == nil {
		w.raw("null")
		return
	}
	w.raw("[")
	for i := range jobs {
		j := &jobs[i]
		if i > 0 {
			w.raw(",")
		}
		w.raw(`{"agent_id":`)
		w.str(j.AgentID)
		w.raw(`,"state":`)
		w.str(string(j.State))
		w.raw(`,"exit_code":`)
		if j.ExitCode == nil {
			w.raw("null")
		} else {
			w.int(int64(*j.ExitCode))
		}
		w.optStr(`,"reason":`, j.Reason)
		w.raw("}")
	}
	w.raw("]")
}

func (w *jsonWriter) promotion(p *Promotion) {
	w.raw(`{"name":`)
	w.str(p.Name)
	w.raw(`,"type":`)
	w.str(p.Type)
	w.raw(`,"state":`)
	w.str(string(p.State))
	w.raw(`,"started_at":`)
	w.timePtr(p.StartedAt)
	w.raw(`,"finished_at":`)
	w.timePtr(p.FinishedAt)
	w.optStr(`,"result":`, p.Result)
	w.optStr(`,"reason":`, p.Reason)
	w.optStr(`,"by":`, p.By)
	if len(p.Jobs) > 0 {
		w.raw(`,"jobs":`)
		w.jobs(p.Jobs)
	}
	w.raw("}")
}

func (w *jsonWriter) spec(s *Spec) {
	w.raw(`{"git_url":`)
	w.str(s.GitURL)
	w.raw(`,"command":`)
	w.str(s.Command)
	w.optBool(`,"shell":`, s.Shell)
	if len(s.Secrets) > 0 {
		w.raw(`,"secrets":[`)
		for i, v := range s.Secrets {
			if i > 0 {
				w.raw(",")
			}
			w.str(v)
		}
		w.raw("]")
	}
	w.optStr(`,"failure_strategy":`, s.FailureStrategy)
	w.optBool(`,"supersede":`, s.Supersede)
	w.raw(`,"environments":`)
	if s.Environments == nil {
		w.raw("null")
	} else {
		w.raw("[")
		for i := range s.Environments {
			if i > 0 {
				w.raw(",")
			}
			w.envSpec(&s.Environments[i])
		}
		w.raw("]")
	}
	w.raw("}")
}

func (w *jsonWriter) envSpec(e *EnvSpec) {
	w.raw(`{"name":`)
	w.str(e.Name)
	w.raw(`,"targets":`)
	w.strMap(e.Targets)
	if len(e.Env) > 0 {
		w.raw(`,"env":`)
		w.strMap(e.Env)
	}
	w.raw(`,"timeout":`)
	w.int(int64(e.Timeout))
	w.optBool(`,"parallel":`, e.Parallel)
	if len(e.Promotions) > 0 {
		w.raw(`,"promotions":[`)
		for i := range e.Promotions {
			p := &e.Promotions[i]
			if i > 0 {
				w.raw(",")
			}
			w.raw(`{"name":`)
			w.str(p.Name)
			w.raw(`,"type":`)
			w.str(p.Type)
			w.optStr(`,"command":`, p.Command)
			if p.Timeout != 0 {
				w.raw(`,"timeout":`)
				w.int(int64(p.Timeout))
			}
			if p.Duration != 0 {
				w.raw(`,"duration":`)
				w.int(int64(p.Duration))
			}
			w.raw("}")
		}
		w.raw("]")
	}
	w.raw("}")
}

const hexDigits = "0123456789abcdef"

// plain marks the ASCII bytes a JSON string holds as they are (by
// encoding/json's default, HTML-escaping rules).
var plain = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// str appends s quoted as encoding/json quotes strings by default: with
// <, > and & escaped for HTML, U+2028 and U+2029 escaped, and invalid
// UTF-8 replaced by U+FFFD.
func (w *jsonWriter) str(s string) {
	b := append(w.b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if plain[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	w.b = append(b, '"')
}
