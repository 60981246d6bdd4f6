//! Borrowing, targeted views of an AdmissionReview: only the fields a decision needs are
//! decoded; everything else is skipped without building a tree. Strings borrow from the request
//! body unless they contain escapes.

use std::{borrow::Cow, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, MapAccess, Visitor},
};
use serde_json::value::RawValue;

use super::{prometheus::StorageView, statefulset::PodTemplateView};
use crate::policy::ANNOTATION_PREFIX;

/// The envelope: `apiVersion`, `kind` and the request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewView<'a> {
    /// `admission.k8s.io/v1`.
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    pub api_version: Option<Cow<'a, str>>,
    /// `AdmissionReview`.
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    pub kind: Option<Cow<'a, str>>,
    /// The request; absent in a response-only body.
    #[serde(borrow, default)]
    pub request: Option<Request<'a>>,
}

/// An admission request, as the engine sees it. The webhook decodes it from JSON; the offline
/// `mutate` command builds one per manifest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    /// Echoed in the response.
    #[serde(borrow)]
    pub uid: Cow<'a, str>,
    /// Group, version and kind of the object.
    #[serde(borrow)]
    pub kind: GroupVersionKind<'a>,
    /// Set for subresource requests (`status`, `scale`).
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    pub sub_resource: Option<Cow<'a, str>>,
    /// Object name (empty for CREATE with `generateName`).
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    pub namespace: Option<Cow<'a, str>>,
    pub operation: Operation,
    #[serde(borrow, default)]
    pub user_info: UserInfo<'a>,
    /// The object after the change.
    #[serde(borrow, default, deserialize_with = "object")]
    pub object: Option<ObjectView<'a>>,
    /// The object before an UPDATE.
    #[serde(borrow, default, deserialize_with = "object")]
    pub old_object: Option<OldObjectView<'a>>,
    /// Dry run: answered like any other, marked in the audit record.
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// Set when the object could not be decoded (a field of an unexpected type); the request is
    /// then answered unchanged with its uid.
    #[serde(skip)]
    pub object_error: Option<String>,
}

/// The envelope again, with the objects skipped: used only when the object itself could not be
/// decoded, so the answer still carries the request's uid.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FallbackReview<'a> {
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    request: Option<FallbackRequest<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FallbackRequest<'a> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow)]
    kind: GroupVersionKind<'a>,
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    namespace: Option<Cow<'a, str>>,
    operation: Operation,
    #[serde(borrow, default)]
    user_info: UserInfo<'a>,
    #[serde(default)]
    dry_run: Option<bool>,
}

impl<'a> FallbackReview<'a> {
    /// The review without its objects.
    pub(crate) fn into_review(self) -> ReviewView<'a> {
        ReviewView {
            api_version: self.api_version,
            kind: self.kind,
            request: self.request.map(|r| Request {
                uid: r.uid,
                kind: r.kind,
                sub_resource: r.sub_resource,
                name: r.name,
                namespace: r.namespace,
                operation: r.operation,
                user_info: r.user_info,
                object: None,
                old_object: None,
                dry_run: r.dry_run,
                object_error: None,
            }),
        }
    }
}

/// `request.kind`.
#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind<'a> {
    /// API group (`""` for core).
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
}

/// `request.userInfo`.
#[derive(Debug, Default, Deserialize)]
pub struct UserInfo<'a> {
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    pub username: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub groups: Option<Vec<CowStr<'a>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

impl Operation {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }
}

impl<'de> Deserialize<'de> for Operation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let CowStr(s) = CowStr::deserialize(d)?;
        match s.as_ref() {
            "CREATE" => Ok(Operation::Create),
            "UPDATE" => Ok(Operation::Update),
            "DELETE" => Ok(Operation::Delete),
            "CONNECT" => Ok(Operation::Connect),
            other => Err(de::Error::invalid_value(
                de::Unexpected::Str(other),
                &"CREATE, UPDATE, DELETE or CONNECT",
            )),
        }
    }
}

/// The fields of any target object that a decision reads. One pass over the object decodes
/// what any of the kinds needs; each kind reads its own part.
#[derive(Debug, Default, Deserialize)]
pub struct ObjectView<'a> {
    #[serde(borrow, default, deserialize_with = "object")]
    pub metadata: Option<MetaView<'a>>,
    #[serde(borrow, default, deserialize_with = "object")]
    pub spec: Option<SpecView<'a>>,
}

/// The union of the `spec` fields the kinds read (their names do not collide). Listed field by
/// field rather than `#[serde(flatten)]`, which would buffer every other field of the spec.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecView<'a> {
    /// Prometheus-Operator CRs: `spec.storage`.
    #[serde(default, deserialize_with = "object")]
    pub storage: Option<StorageView>,
    /// PrometheusAgent: `spec.mode` (`StatefulSet` or `DaemonSet`).
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    pub mode: Option<Cow<'a, str>>,
    /// Prometheus: `spec.retentionSize`.
    #[serde(default)]
    pub retention_size: Option<IgnoredAny>,
    /// `spec.persistentVolumeClaimRetentionPolicy` (CRs and StatefulSets).
    #[serde(default)]
    pub persistent_volume_claim_retention_policy: Option<IgnoredAny>,
    /// StatefulSet: `spec.volumeClaimTemplates` (how many).
    #[serde(default)]
    pub volume_claim_templates: Option<ArrayLen>,
    /// StatefulSet: `spec.template`.
    #[serde(borrow, default, deserialize_with = "object")]
    pub template: Option<PodTemplateView<'a>>,
}

/// `oldObject`: only whether it had storage, and that storage (with its extras) as raw JSON.
#[derive(Debug, Default, Deserialize)]
pub struct OldObjectView<'a> {
    #[serde(borrow, default, deserialize_with = "object")]
    pub spec: Option<OldSpecView<'a>>,
}

/// `oldObject.spec`: what an UPDATE that drops `spec.storage` gets back, as raw JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OldSpecView<'a> {
    /// `spec.storage` of a custom resource.
    #[serde(borrow, default)]
    pub storage: Option<&'a RawValue>,
    /// `spec.retentionSize` (Prometheus).
    #[serde(borrow, default)]
    pub retention_size: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub persistent_volume_claim_retention_policy: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaView<'a> {
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    pub name: Option<Cow<'a, str>>,
    /// `generateName`, for CREATE without a name.
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    pub generate_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrow_opt")]
    pub namespace: Option<Cow<'a, str>>,
    /// Only the `kube-persist.io/*` annotations.
    #[serde(borrow, default)]
    pub annotations: Option<Annotations<'a>>,
    /// Owner references (controller flag only).
    #[serde(borrow, default, deserialize_with = "objects")]
    pub owner_references: Option<Vec<OwnerRefView<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct OwnerRefView<'a> {
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// Whether the owner is the managing controller.
    #[serde(default)]
    pub controller: Option<bool>,
}

/// The object's `kube-persist.io/*` annotations (key without the prefix, value); every other
/// annotation (e.g. a large `last-applied-configuration`) is skipped while decoding.
#[derive(Debug, Default)]
pub struct Annotations<'a>(pub Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Annotations<'a> {
    /// The value of `kube-persist.io/<name>`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Annotations<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Annotations<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of annotations")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut ours = Vec::new();
                while let Some(CowStr(key)) = map.next_key::<CowStr<'a>>()? {
                    match strip_prefix(key) {
                        Some(name) => {
                            let CowStr(value) = map.next_value::<CowStr<'a>>()?;
                            ours.push((name, value));
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Annotations(ours))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

fn strip_prefix(key: Cow<'_, str>) -> Option<Cow<'_, str>> {
    match key {
        Cow::Borrowed(k) => k.strip_prefix(ANNOTATION_PREFIX).map(Cow::Borrowed),
        Cow::Owned(k) => k
            .strip_prefix(ANNOTATION_PREFIX)
            .map(|n| Cow::Owned(n.to_string())),
    }
}

/// An optional JSON object. Serde's derived structs also accept an array (fields by position),
/// which would read `"spec": []` as an empty spec and make a patch that cannot apply; here an
/// array is an error, so the request is answered unchanged.
pub(crate) fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(Option::<Obj<T>>::deserialize(d)?.map(|Obj(t)| t))
}

/// An optional array of JSON objects (see [`object`]).
pub(crate) fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    Ok(Option::<Vec<Obj<T>>>::deserialize(d)?.map(|v| v.into_iter().map(|Obj(t)| t).collect()))
}

/// A struct read from a JSON object only.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(MapOnly(d)).map(Obj)
    }
}

/// Asks for a map where a derived struct asks for a struct (a map or an array).
struct MapOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Deserializes an `Option<Cow<str>>` that borrows from the input when the string has no
/// escapes: serde's derive borrows a plain `Cow<str>` field but not one inside an `Option`,
/// which would allocate a copy of every such string.
pub(crate) fn borrow_opt<'de: 'a, 'a, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<CowStr<'a>>::deserialize(d)?.map(|CowStr(s)| s))
}

/// A string that borrows from the input when it has no escapes (serde's own `Cow` impl always
/// allocates outside derived structs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CowStr<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = CowStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Counts the elements of a JSON array without decoding them.
#[derive(Debug, Default, Clone, Copy)]
pub struct ArrayLen(pub usize);

impl<'de> Deserialize<'de> for ArrayLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ArrayLen;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<S: de::SeqAccess<'de>>(self, mut seq: S) -> Result<ArrayLen, S::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(ArrayLen(n))
            }
        }
        d.deserialize_seq(V)
    }
}
