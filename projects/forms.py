"""The admin's project form: one field per key of projects/schema.py and per option of each
destination kind, checked by the same `config.validate` as the command line before anything
is saved. Its errors name the key they are about; the form puts each on that key's field."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.utils.html import escape

from projects import config, destinations, schema
from projects.errors import ConfigError
from projects.models import Project, ProjectDestination
from projects.outbound import redact_url

_SEPARATORS = re.compile(r"[,\n]")


def field_name(key: str) -> str:
    """The form field, and Project attribute, of a top-level config key."""
    return "destination_kind" if key == "destination" else schema.attribute(key)


def option_field_name(kind: str, option: str) -> str:
    return f"{kind}__{option}"


class ListField(forms.CharField):
    """A list of strings, typed one per line or separated by commas."""

    widget = forms.Textarea(attrs={"rows": 2, "cols": 60})

    def prepare_value(self, value: Any) -> Any:
        return ", ".join(value) if isinstance(value, (list, tuple)) else value

    def to_python(self, value: Any) -> list[str]:
        return [item.strip() for item in _SEPARATORS.split(value or "") if item.strip()]


class PasswordlessURLInput(forms.TextInput):
    """Shows a URL without user:password, so a refused URL is not echoed back with its secret."""

    def format_value(self, value: Any) -> str | None:
        return redact_url(value) if isinstance(value, str) else value


def schema_field(opt: schema.Option, label: str) -> forms.Field:
    """The form field of one schema entry. Only the type is checked here; ranges, choices and
    whether it is required are config.validate's, as on the command line."""
    common: dict[str, Any] = {"required": False, "label": label, "help_text": escape(opt.help)}
    if opt.choices:
        return forms.TypedChoiceField(choices=[(c, c) for c in opt.choices], initial=opt.default, coerce=str,
                                      empty_value=None, **common)
    if opt.types == (bool,):
        return forms.BooleanField(initial=opt.default, **common)
    if opt.types == (int,):
        return forms.IntegerField(initial=opt.default, **common)
    if float in opt.types:
        return forms.FloatField(initial=opt.default, **common)
    if opt.types == (list,):
        return ListField(initial=opt.default, **common)
    return forms.CharField(initial=opt.default, empty_value=None, **common)


def _declared_fields() -> dict[str, forms.Field]:
    fields: dict[str, forms.Field] = {}
    for key, opt in schema.KEYS.items():
        if key == "destinations":  # the first destination is the form's; the others are inline rows
            fields["destination_name"] = forms.CharField(
                label="destination name", required=False, initial=schema.DEFAULT_DESTINATION,
                help_text="how sessions, retries and overrides name this destination; more destinations: the "
                          "rows below")
        elif key == "destination":
            choices = [("", "---------")] + [(k, schema.KINDS[k].label) for k in destinations.KINDS]
            fields["destination_kind"] = forms.ChoiceField(
                label="destination type", choices=choices, required=False,
                help_text="where files go; fill in that type's options below")
        else:
            fields[field_name(key)] = schema_field(opt, field_name(key).replace("_", " "))
    fields["notify_url"].widget = PasswordlessURLInput(attrs={"size": 80})
    for kind, declared in schema.KINDS.items():
        for name, opt in declared.options.items():
            fields[option_field_name(kind, name)] = schema_field(opt, name.replace("_", " "))
    return fields


def project_fieldsets() -> list[tuple[str, dict[str, Any]]]:
    """Source · Destination (the type, then each type's options) · Transfers and retries · Notifications."""
    out: list[tuple[str, dict[str, Any]]] = []
    for group in schema.GROUPS:
        names = [field_name(key) if key != "destinations" else "destination_name"
                 for key, opt in schema.KEYS.items() if opt.group == group]
        out.append((group, {"fields": names}))
        if group == schema.DESTINATION:
            out += [(f"Destination: {declared.label}",
                     {"fields": [option_field_name(kind, name) for name in declared.options],
                      "classes": ["destination-options", f"destination-{kind}"]})
                    for kind, declared in schema.KINDS.items()]
    return out


class _ProjectForm(forms.ModelForm):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        kind, stored = self.instance.destination_kind, self.instance.destination_options
        if self.instance.pk and kind in schema.KINDS and isinstance(stored, dict):
            for name in schema.KINDS[kind].options:
                if name in stored:
                    self.initial[option_field_name(kind, name)] = stored[name]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        try:
            clean = config.validate(self.raw_config(data))
        except ConfigError as exc:
            self.add_error(self.field_of(exc.message, data.get("destination_kind")), exc.message)
            return data
        fields = schema.project_fields(clean)
        del fields["extra_destinations"]  # the inline rows
        try:
            fields["destination_name"] = config.check_destination_name(data.get("destination_name"))
        except ConfigError as exc:
            self.add_error("destination_name", exc.message)
            return data
        for name, value in fields.items():
            setattr(self.instance, name, value)
        data.update(fields)  # the admin copies cleaned_data onto the project: the normalised values
        return data

    def raw_config(self, data: dict[str, Any]) -> dict[str, Any]:
        """The form's values in config-file form; an empty field is a key not given (its default)."""
        raw: dict[str, Any] = {}
        for key in schema.KEYS:
            if key == "destinations":
                continue  # the form's destination is named by its own field
            value = data.get(field_name(key))
            if key == "destination":
                value = {"type": value or None, **self.destination_options(value)}
            if value is not None:
                raw[key] = value
        return raw

    def destination_options(self, kind: str | None) -> dict[str, Any]:
        if kind not in schema.KINDS:
            return {}
        values = {name: self.cleaned_data.get(option_field_name(kind, name)) for name in schema.KINDS[kind].options}
        return {name: value for name, value in values.items() if value is not None}

    def field_of(self, message: str, kind: str | None) -> str | None:
        """The form field an error message of config.validate is about ("destination.bucket: ...")."""
        key, _, option = message.split(":", 1)[0].partition(".")
        if key == "destination":
            name = option_field_name(kind or "", option.split("/")[0])
            return name if name in self.fields else "destination_kind"
        return field_name(key) if key in schema.KEYS else None


class ExtraDestinationForm(forms.ModelForm):
    """One more destination of the project, an inline row: a name, a type and that type's options
    as JSON, validated by its kind exactly like the project's first destination."""

    kind = forms.ChoiceField(label="type", choices=[(k, schema.KINDS[k].label) for k in destinations.KINDS])
    options = forms.JSONField(initial=dict, widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
                              help_text="that type's options as a JSON object, e.g. {\"bucket\": \"b\", "
                                        "\"prefix\": \"raw\"} (the options table of the README)")

    class Meta:
        model = ProjectDestination
        fields = ["name", "kind", "options"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        try:
            data["name"] = config.check_destination_name(data.get("name"), "name")
        except ConfigError as exc:
            self.add_error("name", exc.message)
            return data
        options = data.get("options")
        if not isinstance(options, dict):
            self.add_error("options", "expected a JSON object of the type's options")
            return data
        try:
            data["options"] = destinations.destination_class(data["kind"]).validate_options(
                {"type": data["kind"], **options})
        except ConfigError as exc:
            self.add_error("options", exc.message)
        return data


class ExtraDestinationFormSet(forms.BaseInlineFormSet):
    """Names are unique in the project, the first destination's (the project form's) included."""

    def clean(self) -> None:
        super().clean()
        seen = {(self.instance.destination_name or schema.DEFAULT_DESTINATION).lower()}
        for form in self.forms:
            if not form.cleaned_data or form.cleaned_data.get("DELETE") or "name" not in form.cleaned_data:
                continue
            name = form.cleaned_data["name"]
            if name.lower() in seen:
                form.add_error("name", f"{name!r} is used twice; names are unique in a project")
            seen.add(name.lower())


class _Meta:
    model = Project
    fields = [name for _, options in project_fieldsets() for name in options["fields"]]


# Built with type(): its fields come from the schema, and Django collects a form's fields from its class.
ProjectForm = type("ProjectForm", (_ProjectForm,), {"__module__": __name__, "Meta": _Meta, **_declared_fields()})
