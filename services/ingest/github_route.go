package ingest

import (
	"errors"
	"strings"

	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/ghevent"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// routed is ingest's decision on one delivery: ignored says why nothing is
// published ("" when it is published), ref and commit are for the log.
type routed struct {
	ignored string
	ref     string
	commit  string
}

// Pull request actions that deploy the PR's head.
var prActions = map[string]bool{"opened": true, "reopened": true, "synchronize": true}

// route decides what to do with a verified delivery of event typ for repo,
// whose configured services are services. An error means the payload is
// malformed (400).
func route(typ, repo string, payload []byte, services []*config.Service) (routed, error) {
	switch typ {
	case "push", "pull_request":
	default:
		return routed{ignored: "event " + typ + " is not handled"}, nil
	}
	f, err := ghevent.Scan(payload)
	if err != nil {
		return routed{}, errors.New("malformed " + typ + " payload: not a valid JSON object")
	}
	// The signature was checked with the secret of the repository in the
	// URL: the payload must be about that repository, or a delivery signed
	// for one repository could deploy another.
	if f.Repository != nil && f.Repository.FullName != "" && !strings.EqualFold(f.Repository.FullName, repo) {
		return routed{}, errors.New("the payload's repository " + f.Repository.FullName + " is not " + repo + ", the repository in the URL")
	}
	if typ == "pull_request" {
		return routePR(repo, f, services)
	}
	return routePush(repo, f, services)
}

func routePush(repo string, f ghevent.Fields, services []*config.Service) (routed, error) {
	rt := routed{ref: f.Ref, commit: strings.ToLower(f.After)}
	if branch, ok := strings.CutPrefix(f.Ref, "refs/heads/"); ok {
		if f.Deleted {
			rt.ignored = "branch " + branch + " was deleted"
			return rt, nil
		}
		for _, s := range services {
			if s.TracksBranch(branch) {
				return rt, checkSHA("after", rt.commit)
			}
		}
		rt.ignored = "branch " + branch + " is not tracked by any service"
		return rt, nil
	}
	if tag, ok := strings.CutPrefix(f.Ref, "refs/tags/"); ok {
		if f.Deleted {
			rt.ignored = "tag " + tag + " was deleted"
			return rt, nil
		}
		for _, s := range services {
			if s.Tags {
				return rt, checkSHA("after", rt.commit)
			}
		}
		rt.ignored = "tag pushes are not enabled for any service of " + repo + " (tags: true)"
		return rt, nil
	}
	if f.Ref == "" {
		return rt, errors.New("malformed push payload: no ref")
	}
	rt.ignored = "ref " + f.Ref + " is neither a branch nor a tag"
	return rt, nil
}

func routePR(repo string, f ghevent.Fields, services []*config.Service) (routed, error) {
	if f.PullRequest == nil {
		return routed{}, errors.New("malformed pull_request payload: no pull_request")
	}
	rt := routed{ref: f.PullRequest.Head.Ref, commit: strings.ToLower(f.PullRequest.Head.SHA)}
	if !prActions[f.Action] {
		rt.ignored = "pull_request action " + f.Action + " does not deploy (opened, reopened, synchronize do)"
		return rt, nil
	}
	for _, s := range services {
		if s.PullRequests {
			return rt, checkSHA("pull_request.head.sha", rt.commit)
		}
	}
	rt.ignored = "pull request deployments are not enabled for any service of " + repo + " (pull_requests: true)"
	return rt, nil
}

// checkSHA rejects a payload whose commit is not a full hexadecimal SHA:
// the engine could not deploy it.
func checkSHA(field, sha string) error {
	if wire.ValidCommit(sha) {
		return nil
	}
	return errors.New("malformed payload: " + field + " is not a commit SHA")
}
