package ghevent

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/testenv"
)

func TestScan(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"push", string(testenv.PushPayload("acme/web", "refs/heads/main", sha1)), true},
		{"pull request", string(testenv.PullRequestPayload("acme/lib", "opened", sha2)), true},
		{"escapes", `{"ref":"refs\/heads\/m\u0061in","after":"x\n","deleted":true}`, true},
		{"nulls", `{"ref":null,"pull_request":null,"deleted":null}`, true},
		{"numbers", `{"n":[-0,1.5e3,2E-2,0.1,10]}`, true},
		{"nested", `{"a":[{"b":[[],{}]}],"pull_request":{"head":{"sha":"ab","x":[1]}}}`, true},
		{"empty", ``, false},
		{"array at top", `[]`, false},
		{"truncated", `{"ref": "refs/heads/main", "after": `, false},
		{"trailing", `{} x`, false},
		{"trailing comma", `{"a":1,}`, false},
		{"bad escape", `{"a":"\q"}`, false},
		{"control char", "{\"a\":\"\x01\"}", false},
		{"leading zero", `{"a":01}`, false},
		{"bare minus", `{"a":-}`, false},
		{"ref is a number", `{"ref":1}`, false},
		{"deleted is a string", `{"deleted":"yes"}`, false},
		{"pull_request is a string", `{"pull_request":"x"}`, false},
		{"literal typo", `{"a":tru}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Scan([]byte(tt.in))
			if !tt.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			var want Fields
			require.NoError(t, json.Unmarshal([]byte(tt.in), &want))
			require.Equal(t, want, got)
		})
	}
}

// FuzzScan checks Scan against encoding/json: it accepts an
// object exactly when json.Valid does (unless a routed field has the wrong
// type), and extracts what json.Unmarshal would.
func FuzzScan(f *testing.F) {
	f.Add(testenv.PushPayload("acme/web", "refs/tags/v1", sha1))
	f.Add(testenv.PullRequestPayload("acme/lib", "synchronize", sha2))
	f.Add([]byte(`{"ref":"a\u00e9","deleted":false,"x":[1,{"y":null}],"pull_request":{"head":{"ref":"r"}}}`))
	f.Add([]byte(`{"a":1e5, "b": -0.5, "c": "\\\"", "d": [true,false,null]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Scan(data)
		valid := json.Valid(data)
		if err == nil {
			if !valid {
				t.Fatalf("accepted invalid JSON %q", data)
			}
		} else if valid && strings.HasPrefix(strings.TrimLeft(string(data), " \t\r\n"), "{") {
			var want Fields
			if json.Unmarshal(data, &want) == nil && isASCII(data) {
				t.Fatalf("rejected valid JSON %q: %v", data, err)
			}
		}
		if err != nil || !utf8.Valid(data) || !isASCII(data) {
			return
		}
		var want Fields
		if json.Unmarshal(data, &want) != nil {
			return
		}
		require.Equal(t, want, got, "%q", data)
	})
}

var (
	sha1 = strings.Repeat("a1", 20)
	sha2 = strings.Repeat("b2", 20)
)

func isASCII(b []byte) bool {
	return !bytes.ContainsFunc(b, func(r rune) bool { return r >= utf8.RuneSelf })
}
