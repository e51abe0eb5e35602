/*
 * The LLM chat in a LimeSurvey question (LimeSurvey 5 and 6), link entry. Paste this whole file
 * into the chat question's script field (or between <script> and </script> in the question
 * text's source view) and edit the lines marked below. docs/surveys.md, "LimeSurvey", walks
 * through the survey it expects.
 *
 * It hides and disables Next (#ls-button-submit), opens the chat in the question, writes into
 * hidden short-text questions of the same group
 *   chat_id        the chat's id (joins the service's export)
 *   chat_messages  how many messages the participant sent (the service stored)
 *   chat_done      "1" once the study's minimum is met, "0" before
 *   chat_error     why the chat could not open (study_full, paused, ...), if it could not
 * and shows Next once chat_done is 1. LimeSurvey saves them with the page when Next is pressed.
 *
 * What it relies on in LimeSurvey (LimeSurvey Manual and source, checked 2026-11):
 * - ExpressionScript replaces SID, GID, QID, SAVEDID, TOKEN and a question's code (its answer)
 *   in curly braces before the page is sent (in comments too). Anything in curly braces with
 *   no white space just inside them is an expression ("ExpressionScript - Presentation", key
 *   definitions), so every brace of the code below has a space or a line break inside it.
 * - jQuery is on the page; code runs on "ready" for the first page and on "pjax:scriptcomplete"
 *   after each page LimeSurvey loads in place, the pattern of LimeSurvey's themes
 *   (scripts/custom.js). A handler bound to the document stays bound on later pages, so this one
 *   closes the chat when its page is gone and opens it once when the page is back.
 * - The question is the element #question{QID}; Next is the submit button #ls-button-submit.
 * - A short free text question's input is named by its SGQA identifier, SID X GID X QID
 *   ("SGQA identifier"; application/core/QuestionTypes/ShortFreeText/RenderShortFreeText.php),
 *   and is submitted with the page even when the question is always hidden.
 * - Panel integration saves a URL parameter (Prolific's PROLIFIC_PID) into a short text
 *   question ("Panel integration"), which an expression reads on a later page.
 */
(function () {
  // ---- the lines to edit
  var CHAT_JS = "https://YOUR-STATIC-HOST/client_js/";   // where you copied client_js/ (https, CORS headers)
  var ENTRY_URL = "https://YOUR-ENTRY-URL";               // the stack's EntryUrl output
  var STUDY = "YOUR-STUDY-ID";                            // the study's id
  // the question IDs (QID) of the four hidden short-text questions, in this question's group
  var FIELD_QIDS = { chat_id: 0, chat_messages: 0, chat_done: 0, chat_error: 0 };
  // the ids to record; the first one set is the participant: the panel integration's question
  // (code PID) on an earlier page; with a participant list, the variable TOKEN in curly braces
  var IDS = { PROLIFIC_PID: "{PID}" };
  // ----

  var FAILED = "The chat could not be loaded. Please reload the page; if this happens again, contact the researchers.";
  var box = null;
  var mounted = null;
  // what an expression left is an id only if it has an id's shape (not an unknown variable's markup)
  var code = function (value) { return /^[A-Za-z0-9_.:-]+$/.test(value) ? value : ""; };

  var start = function () {
    if (box && !box.isConnected) {  // LimeSurvey loaded another page in place: close this chat
      if (mounted) mounted.destroy();
      box = mounted = null;
    }
    var question = document.getElementById("question{QID}");
    if (!question || question.querySelector("[data-llm-chat]")) return;  // another page, or open already

    var next = document.getElementById("ls-button-submit");
    var hold = function (held) {
      if (!next) return;
      next.style.display = held ? "none" : "";
      next.disabled = held;
    };
    var save = function (name, value) {
      var input = document.querySelector('[name="{SID}X{GID}X' + FIELD_QIDS[name] + '"]');
      if (!input) return;
      input.value = String(value);
      input.dispatchEvent(new Event("change", { bubbles: true }));  // expressions on the page follow it
    };
    hold(true);
    box = question.appendChild(document.createElement("div"));
    box.setAttribute("data-llm-chat", "");

    var ids = { };
    var participant = "";
    for (var name in IDS) {
      if (code(IDS[name])) ids[name] = IDS[name];
      participant = participant || ids[name] || "";
    }
    if (code("{SAVEDID}")) ids.SAVEDID = "{SID}-{SAVEDID}";  // the response, for the export's join
    var options = {
      entry: { url: ENTRY_URL, study: STUDY, participant: participant || ids.SAVEDID || "", ids: ids },
      onProgress: function (progress) {
        save("chat_id", progress.chatId);
        save("chat_messages", progress.messages);
        save("chat_done", progress.done ? 1 : 0);
        hold(!progress.done);
      },
      onRefused: function (why) { save("chat_error", why); }
    };
    var target = box;
    import(CHAT_JS + "survey.js").then(function (survey) {
      if (target === box) mounted = survey.mountSurveyChat(target, options);
    }, function () {
      target.textContent = FAILED;
      save("chat_error", "script_failed");
    });
  };
  $(document).on("ready pjax:scriptcomplete", start);
  start();  // at once too: a page that is ready already (jQuery 3) runs no "ready" handler bound now
})();
