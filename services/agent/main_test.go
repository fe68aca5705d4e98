package agent

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Variables of the agent's own environment that the tests look for in the
// deploy command's: one the command must inherit (and that a job names as a
// secret) and one of the agent's configuration it must not.
const (
	testSecretVar   = "AGENT_TEST_DEPLOY_SECRET"
	testSecretValue = "s3cr3t-Value-9f2"
	testPlainVar    = "AGENT_TEST_PLAIN"
	testPlainValue  = "plain-value-visible"
	testConfigVar   = "OTARIINAE_AGENT_TEST_CONFIG"
	testConfigValue = "must-not-leak"
)

func TestMain(m *testing.M) {
	// Set once before any test runs: tests are parallel, so t.Setenv is out.
	for k, v := range map[string]string{
		testSecretVar: testSecretValue, testPlainVar: testPlainValue, testConfigVar: testConfigValue,
	} {
		if err := os.Setenv(k, v); err != nil {
			panic(err)
		}
	}
	goleak.VerifyTestMain(m)
}
