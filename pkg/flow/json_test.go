package flow

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sameJSON checks AppendJSON against encoding/json for f, appending to a
// non-empty buffer to check that it appends.
func sameJSON(t *testing.T, f *Flow) {
	t.Helper()
	want, wantErr := json.Marshal(f)
	got, err := f.AppendJSON([]byte("x"))
	if wantErr != nil {
		require.Error(t, err)
		return
	}
	require.NoError(t, err)
	require.Equal(t, "x"+string(want), string(got))
}

// everyField is a flow with every optional field set, and strings that
// need escaping.
func everyField() *Flow {
	code, neg := 0, -3
	at := t0.Add(1500 * time.Microsecond)
	local := time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 5*3600+1800))
	return &Flow{
		ID: "id", Artifact: "acme:web", Version: "v1 <b>&amp;</b>", Commit: "c", Ref: "refs/heads/é\u2028\u2029",
		Service: "web\"q\\", Repository: "acme/web", State: FlowFailed, CreatedAt: t0, UpdatedAt: local,
		Supersedes: "s", RollbackOf: "r", RedeployOf: "d", Reason: "tab\there\nnew\x00\x1f\x7f",
		Metadata: map[string]string{"z": "1", "a": "\xff\xfe", "m": ""},
		Deployments: []Deployment{{
			ID: "d1", FlowID: "id", Environment: "staging", State: Failed, CreatedAt: &at, StartedAt: &local, CompletedAt: &at, FinishedAt: &local,
			Reason: "r", Waiting: true,
			Jobs: []Job{{AgentID: "a1", State: JobFailed, ExitCode: &neg, Reason: "boom"}, {AgentID: "a2", State: JobSucceeded, ExitCode: &code}},
			Promotions: []Promotion{
				{Name: "smoke", Type: PromotionScript, State: PromotionFailed, StartedAt: &at, FinishedAt: &at, Result: "failed", Reason: "x", By: "me",
					Jobs: []Job{{AgentID: "a1", State: JobRunning}}},
				{Name: "ok", Type: PromotionManual, State: PromotionPending, Jobs: []Job{}},
			},
		}, {ID: "d2", State: NotStarted}},
		Spec: &Spec{
			GitURL: "file:///srv/x.git", Command: "./deploy.sh --a=<b>", Shell: true, Secrets: []string{"A", "B"},
			FailureStrategy: "rollback", Supersede: true,
			Environments: []EnvSpec{
				{Name: "staging", Targets: map[string]string{"env": "staging", "az": "b"}, Env: map[string]string{"K": "v"}, Timeout: time.Minute, Parallel: true,
					Promotions: []PromotionSpec{{Name: "smoke", Type: "script", Command: "./smoke", Timeout: time.Second, Duration: 2 * time.Second}, {Name: "m", Type: "manual"}}},
				{Name: "production", Targets: map[string]string{}, Env: map[string]string{}},
				{Name: "nil targets"},
			},
		},
	}
}

func TestAppendJSON(t *testing.T) {
	t.Parallel()
	sameJSON(t, everyField())
	sameJSON(t, &Flow{})
	sameJSON(t, &Flow{Deployments: []Deployment{}, Metadata: map[string]string{}, Spec: &Spec{}})
	sameJSON(t, &Flow{Deployments: []Deployment{{Jobs: []Job{}, Promotions: []Promotion{}}}})
	// A time json.Marshal refuses.
	sameJSON(t, &Flow{CreatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)})
	// Every state a whole run goes through.
	c := create("staging", "production")
	stg := DeploymentID(c.FlowID, "staging")
	var f *Flow
	for i, ev := range []Event{c, SlotGranted{DeploymentID: stg}, js(stg, "s1"), js(stg, "s2"), jf(stg, "s1", 0, ""), jf(stg, "s2", 1, "exit 1")} {
		var err error
		f, _, err = Apply(f, ev, in(i))
		require.NoError(t, err)
		sameJSON(t, f)
		sameJSON(t, f.View())
	}
}

// FuzzAppendJSON puts arbitrary strings, numbers and flags where the
// flow has them and compares with encoding/json.
func FuzzAppendJSON(f *testing.F) {
	f.Add("id", "refs/heads/main", "<&>", "\u2028", int64(0), int64(-1), true)
	f.Add("\xff", "\"\\", "\x00\x1f", "é", int64(1)<<62, int64(1500), false)
	f.Fuzz(func(t *testing.T, a, b, c, d string, n, ns int64, flag bool) {
		fl := everyField()
		fl.ID, fl.Ref, fl.Reason, fl.Service = a, b, c, d
		fl.Metadata = map[string]string{a: b, c: d}
		fl.CreatedAt = time.Unix(0, ns).UTC()
		code := int(n)
		fl.Deployments[0].Jobs[0].ExitCode = &code
		fl.Deployments[0].Waiting = flag
		fl.Deployments[0].Promotions[0].By = d
		fl.Spec.Environments[0].Timeout = time.Duration(n)
		fl.Spec.Environments[0].Targets = map[string]string{b: a}
		fl.Spec.Secrets = []string{c}
		fl.Spec.Shell = flag
		sameJSON(t, fl)
	})
}

func TestAppendJSONTimes(t *testing.T) {
	t.Parallel()
	for _, at := range []time.Time{
		{}, t0, time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 1, time.FixedZone("", -(23*3600+59*60))), time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 24*3600)),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 30)), time.Unix(1<<40, 0).UTC(),
	} {
		sameJSON(t, &Flow{CreatedAt: at, UpdatedAt: at.Local()})
	}
}

// TestEveryFieldSetsEveryField guards AppendJSON against fields added to
// the model later: everyField must set each field of each struct it holds
// (somewhere), so that TestAppendJSON compares its encoding with
// encoding/json. A new field left out of AppendJSON fails there; one left
// out of everyField fails here.
func TestEveryFieldSetsEveryField(t *testing.T) {
	t.Parallel()
	fields := map[string]bool{} // "Type.Field" -> set in at least one value
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Pointer:
			if !v.IsNil() {
				walk(v.Elem())
			}
		case reflect.Slice:
			for i := range v.Len() {
				walk(v.Index(i))
			}
		case reflect.Map:
			for it := v.MapRange(); it.Next(); {
				walk(it.Value())
			}
		case reflect.Struct:
			if v.Type().PkgPath() != reflect.TypeFor[Flow]().PkgPath() {
				return // time.Time and the like: values, not model fields
			}
			for i := range v.NumField() {
				name := v.Type().Name() + "." + v.Type().Field(i).Name
				fields[name] = fields[name] || !v.Field(i).IsZero()
				walk(v.Field(i))
			}
		}
	}
	walk(reflect.ValueOf(everyField()))
	require.NotEmpty(t, fields)
	var unset []string
	for name, set := range fields {
		if !set {
			unset = append(unset, name)
		}
	}
	slices.Sort(unset)
	require.Empty(t, unset, "everyField leaves these at their zero value: set them, so that AppendJSON is checked against encoding/json for them")
	for _, typ := range []reflect.Type{
		reflect.TypeFor[Flow](), reflect.TypeFor[Deployment](), reflect.TypeFor[Job](), reflect.TypeFor[Promotion](),
		reflect.TypeFor[Spec](), reflect.TypeFor[EnvSpec](), reflect.TypeFor[PromotionSpec](),
	} {
		require.Contains(t, fields, typ.Name()+"."+typ.Field(0).Name, "everyField holds no %s", typ.Name())
	}
}
