// A minimal ext_proc server that picks the backend of each request, the way AIBrix's gateway plugin,
// the Gateway API Inference Extension's endpoint picker and Envoy AI Gateway route: Envoy sends it the
// request headers (and, when no header names the model, the buffered body); it reads the model, looks
// its endpoint up and answers with the x-gateway-destination-endpoint header that Envoy's ORIGINAL_DST
// cluster connects to. Nothing more: no scoring, no metrics, so the hop's cost is the hop itself.
//
//	extproc -listen 127.0.0.1:PORT -route MODEL=HOST:PORT [-route ...]
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
)

// DestinationHeader is the Inference Extension's name for the picked endpoint.
const DestinationHeader = "x-gateway-destination-endpoint"

type routes map[string]string

func (r routes) String() string { return fmt.Sprint(map[string]string(r)) }

func (r routes) Set(value string) error {
	model, endpoint, found := strings.Cut(value, "=")
	if !found || model == "" || endpoint == "" {
		return fmt.Errorf("-route wants MODEL=HOST:PORT, got %q", value)
	}
	r[model] = endpoint
	return nil
}

type server struct {
	extprocv3.UnimplementedExternalProcessorServer
	routes routes
}

func headerValue(headers *corev3.HeaderMap, name string) string {
	for _, h := range headers.GetHeaders() {
		if h.GetKey() == name {
			if raw := h.GetRawValue(); len(raw) > 0 {
				return string(raw)
			}
			return h.GetValue()
		}
	}
	return ""
}

func destination(endpoint string) *extprocv3.CommonResponse {
	return &extprocv3.CommonResponse{
		HeaderMutation: &extprocv3.HeaderMutation{
			SetHeaders: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: DestinationHeader, RawValue: []byte(endpoint)},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}},
		},
	}
}

func notFound(model string) *extprocv3.ProcessingResponse {
	body, _ := json.Marshal(map[string]any{"error": map[string]any{
		"message": fmt.Sprintf("The model `%s` does not exist", model), "type": "invalid_request_error",
		"param": "model", "code": "model_not_found",
	}})
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode_NotFound}, Body: body},
	}}
}

// Process answers one request's messages: headers first; the body only when the headers named no model.
func (s *server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		var resp *extprocv3.ProcessingResponse
		switch r := req.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			model := headerValue(r.RequestHeaders.GetHeaders(), "x-model")
			switch {
			case model != "":
				endpoint, ok := s.routes[model]
				if !ok {
					resp = notFound(model)
					break
				}
				// The header decided: the body goes straight through, never to this server.
				resp = &extprocv3.ProcessingResponse{
					Response:     &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: destination(endpoint)}},
					ModeOverride: &filterv3.ProcessingMode{RequestBodyMode: filterv3.ProcessingMode_NONE, ResponseHeaderMode: filterv3.ProcessingMode_SKIP},
				}
			case r.RequestHeaders.GetEndOfStream():
				resp = notFound("")
			default:
				resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
			}
		case *extprocv3.ProcessingRequest_RequestBody:
			var body struct {
				Model string `json:"model"`
			}
			_ = json.Unmarshal(r.RequestBody.GetBody(), &body)
			endpoint, ok := s.routes[body.Model]
			if !ok {
				resp = notFound(body.Model)
				break
			}
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: destination(endpoint)}}}
		default:
			// The filter is configured for request headers and bodies only.
			return fmt.Errorf("unexpected processing request %T", req.Request)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "gRPC address")
	table := routes{}
	flag.Var(table, "route", "MODEL=HOST:PORT (repeatable)")
	flag.Parse()
	if len(table) == 0 {
		fmt.Fprintln(os.Stderr, "extproc: at least one -route MODEL=HOST:PORT")
		os.Exit(2)
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	grpcServer := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(grpcServer, &server{routes: table})
	fmt.Printf("listening %s\n", lis.Addr())
	if err := grpcServer.Serve(lis); err != nil {
		log.Fatal(err)
	}
}
