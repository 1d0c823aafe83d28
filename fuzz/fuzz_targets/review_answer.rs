//! `webhook::handler::answer`, the whole path from request bytes to response bytes.
//!
//! An input that starts with `{` (or whitespace) is sent as it is: arbitrary bytes, seeded with
//! the AdmissionReviews of tests/fixtures. Any other input is decoded (`arbitrary`) into Pod
//! fields (images, existing imagePullSecrets with empty names, init containers, image volumes,
//! labels, namespace, operation, endpoint) and sent as a well-formed AdmissionReview.
//!
//! Properties (ids in `fuzz_support::review`): never panics; HTTP 200 or 400 only, and 200 for
//! every well-formed review; a 200 is an AdmissionReview echoing the uid and apiVersion with
//! `allowed: true`; /audit never patches; a patch is base64 of a JSON Patch of adds only, applies
//! to the request's object, keeps the Pod's own imagePullSecrets first and in order, adds no
//! secret twice nor one the Pod lists; the patched Pod answered again gets no patch; and when
//! enforced, every image's rule has all its secrets listed and its pull policy set; an object
//! with an array where the Pod has an object is never patched.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use fuzz_support::review::{PodInput, check_body};
use libfuzzer_sys::fuzz_target;
use pullsecret_injector::core::decision::Endpoint;

fuzz_target!(|data: &[u8]| {
    match data.first() {
        Some(b'{' | b' ' | b'\n' | b'\t' | b'\r') => {
            let endpoint = if data.len() % 2 == 0 {
                Endpoint::Mutate
            } else {
                Endpoint::Audit
            };
            check_body(endpoint, data, false, None);
        }
        _ => {
            let Ok(input) = PodInput::arbitrary_take_rest(Unstructured::new(data)) else {
                return;
            };
            let body = serde_json::to_vec(&input.body()).expect("serialises");
            if fuzz_support::show() {
                eprintln!("{}", String::from_utf8_lossy(&body));
            }
            check_body(input.endpoint(), &body, true, Some(input.enforced()));
        }
    }
});
