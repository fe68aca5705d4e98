package wire

import (
	"encoding/json"
	"strconv"
)

// DecodeJobReport decodes a JobReport exactly as json.Unmarshal would
// (FuzzDecodeJobReport holds it to that). Reports as agents write them (the
// known keys, plain ASCII strings, an integer or null exit code) are read
// in one pass without reflection; anything else goes to json.Unmarshal.
// Job reports are most of the engine's events, and encoding/json was a
// tenth of its CPU time on them (docs/performance.md).
func DecodeJobReport(data []byte) (JobReport, error) {
	if r, ok := decodeJobReportFast(data); ok {
		return r, nil
	}
	var r JobReport
	err := json.Unmarshal(data, &r)
	return r, err
}

// decodeJobReportFast reads the common shape of a report; false means
// "not sure": the caller decodes with encoding/json.
func decodeJobReportFast(b []byte) (JobReport, bool) {
	var r JobReport
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return r, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return r, skipSpace(b, i+1) == len(b)
	}
	for {
		key, j, ok := plainString(b, i)
		if !ok {
			return r, false
		}
		i = skipSpace(b, j)
		if i >= len(b) || b[i] != ':' {
			return r, false
		}
		i = skipSpace(b, i+1)
		var dst *string
		switch key {
		case "job_id":
			dst = &r.JobID
		case "flow_id":
			dst = &r.FlowID
		case "deployment_id":
			dst = &r.DeploymentID
		case "promotion":
			dst = &r.Promotion
		case "agent_id":
			dst = &r.AgentID
		case "reason":
			dst = &r.Reason
		case "state", "at":
		case "exit_code":
			if j, ok = plainInt(b, i, &r.ExitCode); !ok {
				return r, false
			}
		default:
			return r, false
		}
		switch key {
		case "exit_code":
		case "state":
			var s string
			if s, j, ok = plainString(b, i); !ok {
				return r, false
			}
			r.State = JobState(s)
		case "at":
			start := i
			if _, j, ok = plainString(b, i); !ok || r.At.UnmarshalJSON(b[start:j]) != nil {
				return r, false
			}
		default:
			if *dst, j, ok = plainString(b, i); !ok {
				return r, false
			}
		}
		i = skipSpace(b, j)
		if i >= len(b) {
			return r, false
		}
		if b[i] == '}' {
			return r, skipSpace(b, i+1) == len(b)
		}
		if b[i] != ',' {
			return r, false
		}
		i = skipSpace(b, i+1)
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString reads a string at b[i] with no escapes, control characters
// or non-ASCII bytes, and returns it and the index after it.
func plainString(b []byte, i int) (string, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return "", i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return string(b[i+1 : j]), j + 1, true
		case c < 0x20 || c == '\\' || c >= 0x80:
			return "", j, false
		}
	}
	return "", len(b), false
}

// plainInt reads null or an integer (JSON syntax, no fraction or
// exponent, within int) at b[i] into *dst.
func plainInt(b []byte, i int, dst **int) (int, bool) {
	if len(b)-i >= 4 && string(b[i:i+4]) == "null" {
		*dst = nil
		return i + 4, true
	}
	j := i
	if j < len(b) && b[j] == '-' {
		j++
	}
	digits := j
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	if j == digits || (b[digits] == '0' && j-digits > 1) {
		return j, false
	}
	if j < len(b) && (b[j] == '.' || b[j] == 'e' || b[j] == 'E') {
		return j, false
	}
	n, err := strconv.Atoi(string(b[i:j]))
	if err != nil {
		return j, false
	}
	*dst = &n
	return j, true
}
