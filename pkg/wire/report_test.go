package wire

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sameReport checks DecodeJobReport against json.Unmarshal.
func sameReport(t *testing.T, data []byte) {
	t.Helper()
	var want JobReport
	wantErr := json.Unmarshal(data, &want)
	got, err := DecodeJobReport(data)
	if wantErr != nil {
		require.Error(t, err, "%q", data)
		return
	}
	require.NoError(t, err, "%q", data)
	require.Equal(t, want, got, "%q", data)
}

func TestDecodeJobReport(t *testing.T) {
	t.Parallel()
	code := 137
	full, err := json.Marshal(JobReport{JobID: "j", FlowID: "f", DeploymentID: "f-staging", Promotion: "smoke", AgentID: "a1",
		State: JobFinished, ExitCode: &code, Reason: "killed", At: time.Date(2026, 11, 23, 6, 0, 0, 123, time.UTC)})
	require.NoError(t, err)
	started, err := json.Marshal(JobReport{JobID: "j", FlowID: "f", DeploymentID: "f-staging", AgentID: "a1", State: JobStarted, At: time.Now()})
	require.NoError(t, err)
	r, ok := decodeJobReportFast(full)
	require.True(t, ok, "what agents write takes the fast path")
	require.Equal(t, 137, *r.ExitCode)
	_, ok = decodeJobReportFast(started)
	require.True(t, ok)
	for _, in := range []string{
		string(full), string(started), `{}`, ` { "job_id" : "x" , "exit_code" : -0 } `, `{"exit_code":null}`, `{"exit_code":0}`,
		`{"exit_code":-12}`, `{"exit_code":01}`, `{"exit_code":1.5}`, `{"exit_code":1e2}`, `{"exit_code":99999999999999999999}`,
		`{"exit_code":"1"}`, `{"job_id":"a","job_id":"b"}`, `{"JOB_ID":"upper"}`, `{"job_id":"\u0041"}`, `{"job_id":"é"}`,
		`{"job_id":"\xff"}`, `{"job_id":null}`, `{"at":"2026-11-23T06:00:00+01:00"}`, `{"at":"2026-11-23"}`, `{"at":null}`,
		`{"unknown":[1,{"a":2}],"job_id":"x"}`, `{"job_id":"x",}`, `{"job_id":"x"} x`, `{"job_id":"x"`, `{`, ``, `[]`, `null`,
		`{"state":"started","reason":"tab\there"}`, "{\"reason\":\"ctl\x01\"}", `{"exit_code":-}`, `{"exit_code":}`,
	} {
		sameReport(t, []byte(in))
	}
}

func FuzzDecodeJobReport(f *testing.F) {
	f.Add([]byte(`{"job_id":"j","flow_id":"f","deployment_id":"d","agent_id":"a","state":"finished","exit_code":0,"at":"2026-11-23T06:00:00Z"}`))
	f.Add([]byte(`{"exit_code":null,"promotion":"p","reason":"r"}`))
	f.Add([]byte(` {"at":"2026-11-23T06:00:00.5-07:00" , "exit_code": -3}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		sameReport(t, data)
	})
}
