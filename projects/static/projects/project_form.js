// The project form shows only the options of the chosen destination type. Without this script
// every type's options show, each group headed by its type.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  const kind = document.getElementById("id_destination_kind");
  if (!kind) {
    return;
  }
  const groups = document.querySelectorAll("fieldset.destination-options");
  function show() {
    groups.forEach(function (group) {
      group.style.display = group.classList.contains("destination-" + kind.value) ? "" : "none";
    });
  }
  kind.addEventListener("change", show);
  show();
});
