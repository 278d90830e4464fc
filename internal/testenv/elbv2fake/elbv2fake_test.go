package elbv2fake_test

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/drover/drover/internal/testenv/elbv2fake"
)

func post(t *testing.T, f *elbv2fake.Fake, form url.Values) (int, string) {
	t.Helper()
	resp, err := http.PostForm(f.URL, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestQueryProtocol: the raw wire shape, as the AWS documentation shows it.
func TestQueryProtocol(t *testing.T) {
	f := elbv2fake.Start(t, elbv2fake.Options{Targets: []elbv2fake.Target{{ID: "i-1", Port: 8080}}})
	code, body := post(t, f, url.Values{"Action": {"DescribeTargetHealth"}, "Version": {"2015-12-01"}, "TargetGroupArn": {f.ARN}})
	want := `<DescribeTargetHealthResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"><DescribeTargetHealthResult><TargetHealthDescriptions><member><Target><Id>i-1</Id><Port>8080</Port></Target><HealthCheckPort>8080</HealthCheckPort><TargetHealth><State>healthy</State></TargetHealth></member></TargetHealthDescriptions></DescribeTargetHealthResult><ResponseMetadata><RequestId>fake-request</RequestId></ResponseMetadata></DescribeTargetHealthResponse>`
	if code != 200 || !strings.Contains(body, want) {
		t.Errorf("DescribeTargetHealth: %d\n%s\nwant\n%s", code, body, want)
	}
	code, body = post(t, f, url.Values{"Action": {"DeregisterTargets"}, "Version": {"2015-12-01"}, "TargetGroupArn": {f.ARN}, "Targets.member.1.Id": {"i-1"}, "Targets.member.1.Port": {"8080"}})
	if code != 200 || !strings.Contains(body, "<DeregisterTargetsResponse") || !strings.Contains(body, "<DeregisterTargetsResult></DeregisterTargetsResult>") {
		t.Errorf("DeregisterTargets: %d %s", code, body)
	}
	code, body = post(t, f, url.Values{"Action": {"DescribeTargetHealth"}, "Version": {"2012-06-01"}, "TargetGroupArn": {f.ARN}})
	if code != 400 || !strings.Contains(body, "<ErrorResponse") || !strings.Contains(body, "<Code>InvalidParameterValue</Code>") {
		t.Errorf("wrong Version: %d %s", code, body)
	}
	code, body = post(t, f, url.Values{"Action": {"DeleteTargetGroup"}, "Version": {"2015-12-01"}, "TargetGroupArn": {f.ARN}})
	if code != 400 || !strings.Contains(body, "<Code>InvalidAction</Code>") {
		t.Errorf("another action: %d %s", code, body)
	}
	if calls := f.Calls(); len(calls) != 3 || calls[1] != "DeregisterTargets i-1:8080" {
		t.Errorf("Calls() = %q", calls)
	}
}
